"""Partitions: a fixed set of hash tags spread over the masters.

The partition map is the one place that says where data goes. It is computed once, when
the cluster is created, and stored in the cluster itself (``keys.partition_map()``), so
every loader, worker and asker agrees on it. A document goes to the partition chosen by
hashing its id; a passage id embeds its document's hash, so the partition of any passage
is known from its id alone. Slots may later move between masters (rebalancing); the map
of partition -> tag -> slot never changes, only which master owns a slot.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from redis.crc import key_slot

from cluster import keys
from cluster.errors import ShardqaError

DEFAULT_PARTITIONS = 16
_PASSAGE_ID = re.compile(r"[0-9a-f]{16}\.[0-9]{1,9}")


@dataclass(frozen=True)
class Partition:
    index: int
    tag: str
    slot: int


def doc_key(doc_id: str) -> str:
    """Stable 16-hex digest of a document id; partition choice and passage ids derive from it."""
    return hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).hexdigest()


def passage_id(doc_id: str, position: int) -> str:
    """Stable passage id from the document id and the passage's position in it."""
    return f"{doc_key(doc_id)}.{position}"


def doc_key_of(pid: str) -> str:
    return pid.split(".", 1)[0]


def is_passage_id(pid: str) -> bool:
    """Whether ``pid`` has the shape ``passage_id`` gives: 16 hex digits, '.', a position."""
    return _PASSAGE_ID.fullmatch(pid) is not None


class PartitionMap:
    """Partition index -> hash tag -> slot. Immutable once created."""

    def __init__(self, partitions: list[Partition]):
        if not partitions:
            raise ValueError("a partition map needs at least one partition")
        self.partitions = list(partitions)
        self._by_tag = {p.tag: p for p in self.partitions}

    def __len__(self) -> int:
        return len(self.partitions)

    def __iter__(self):
        return iter(self.partitions)

    def __getitem__(self, index: int) -> Partition:
        return self.partitions[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PartitionMap) and self.partitions == other.partitions

    def by_tag(self, tag: str) -> Partition:
        return self._by_tag[tag]

    def for_doc_key(self, dkey: str) -> Partition:
        return self.partitions[int(dkey, 16) % len(self.partitions)]

    def for_doc(self, doc_id: str) -> Partition:
        return self.for_doc_key(doc_key(doc_id))

    def for_passage(self, pid: str) -> Partition:
        return self.for_doc_key(doc_key_of(pid))

    # --- creation and storage ----------------------------------------------------------

    @classmethod
    def create(cls, count: int, master_slot_ranges: list[list[tuple[int, int]]]) -> PartitionMap:
        """Choose ``count`` tags so that masters differ by at most one partition.

        ``master_slot_ranges`` lists, per master, the slot ranges it owns. Partition i goes
        to master ``i % len(masters)``; its tag is the first ``p<i>.<n>`` whose slot that
        master owns.
        """
        if count < 1:
            raise ValueError("the number of partitions must be at least 1")
        if not master_slot_ranges:
            raise ValueError("the cluster has no masters with slots")
        masters = sorted(master_slot_ranges, key=lambda ranges: min(r[0] for r in ranges))
        partitions: list[Partition] = []
        for index in range(count):
            ranges = masters[index % len(masters)]
            n = 0
            while True:
                tag = f"p{index}.{n}"
                slot = key_slot(tag.encode())
                if any(lo <= slot <= hi for lo, hi in ranges):
                    break
                n += 1
            partitions.append(Partition(index, tag, slot))
        return cls(partitions)

    def to_json(self) -> str:
        return json.dumps(
            {"version": 1, "partitions": [[p.index, p.tag, p.slot] for p in self.partitions]}
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> PartitionMap:
        data = json.loads(raw)
        return cls([Partition(int(i), str(t), int(s)) for i, t, s in data["partitions"]])


class NoPartitionMap(ShardqaError):
    """The cluster has no partition map: it was not created by ``shardqa cluster up``/``init``."""


def load(client) -> PartitionMap:
    raw = client.get(keys.partition_map())
    if raw is None:
        raise NoPartitionMap(
            "this cluster has no shardqa partition map; run 'shardqa cluster init' "
            "(or create it with 'shardqa cluster up')"
        )
    return PartitionMap.from_json(raw)


def ensure(client, count: int = DEFAULT_PARTITIONS) -> PartitionMap:
    """Load the stored map, or create and store one (SET NX, so racing creators agree)."""
    raw = client.get(keys.partition_map())
    if raw is not None:
        return PartitionMap.from_json(raw)
    pmap = PartitionMap.create(count, master_slot_ranges(client))
    client.set(keys.partition_map(), pmap.to_json(), nx=True)
    return load(client)


def master_slot_ranges(client) -> list[list[tuple[int, int]]]:
    """Per master, the slot ranges it owns, from CLUSTER SLOTS."""
    by_master: dict[str, list[tuple[int, int]]] = {}
    for (lo, hi), info in slot_table(client).items():
        by_master.setdefault(info["primary"], []).append((lo, hi))
    return list(by_master.values())


def slot_table(client) -> dict[tuple[int, int], dict]:
    """(first, last) slot -> {"primary": "host:port", "replicas": [...]}, live from the cluster."""
    raw = client.cluster_slots()

    def address(node) -> str:
        # a node that never met another (a one-master cluster) reports itself with no host:
        # it is the node the client reached. Asked only then: while the client refreshes its
        # slot map (a rebalance under load) it may have no default node for a moment
        return f"{node[0] or client.get_default_node().host}:{node[1]}"

    table: dict[tuple[int, int], dict] = {}
    for (lo, hi), info in raw.items():
        table[(int(lo), int(hi))] = {
            "primary": address(info["primary"]),
            "replicas": [address(r) for r in info.get("replicas", [])],
        }
    return table


def owners(client, pmap: PartitionMap) -> dict[int, str]:
    """Partition index -> "host:port" of the master that owns its slot now."""
    table = slot_table(client)
    result: dict[int, str] = {}
    for p in pmap:
        for (lo, hi), info in table.items():
            if lo <= p.slot <= hi:
                result[p.index] = info["primary"]
                break
    return result
