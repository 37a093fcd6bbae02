"""Rebalancing: move whole partitions between masters, live, until they differ by at most one.

A partition is one slot (the slot of its hash tag), so moving a partition moves that slot
with all its keys, the way ``redis-cli --cluster reshard`` does: the destination IMPORTING,
the source MIGRATING, the keys sent with MIGRATE in batches, then SETSLOT NODE on every
master. Clients keep working meanwhile: a key already moved is answered by the destination
after an ASK redirect, and once the slot is flipped the source answers MOVED. Only the
partitions' slots are moved; the other slots (answer-cache keys spread by their own hash)
stay where they are, since nothing in shardqa depends on where they live.

The plan never moves a master's lowest-index partition (its model copy lives under that
tag, see models/store.py) and moves partitions in ascending order, so a master's copy tag
changes only when it receives a partition below all of its own; ``prepare`` (called before
every move) is where the caller puts a model copy under that partition's tag first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis

from cluster import functions, partitions, routing
from cluster.errors import ShardqaError
from cluster.partitions import Partition, PartitionMap
from cluster.waiting import until

#: keys per MIGRATE: a batch is one round trip; the source is busy while it runs
DEFAULT_BATCH = 1000
#: MIGRATE's I/O timeout (ms): model chunks of up to 64 MB travel in one batch
DEFAULT_TIMEOUT_MS = 120_000


class RebalanceError(ShardqaError):
    """A slot could not be moved; the message says what state it was left in."""


@dataclass(frozen=True)
class Master:
    """A master of the cluster as the cluster itself sees it (CLUSTER NODES)."""

    node_id: str
    host: str
    port: int

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Move:
    partition: Partition
    source: str  # "host:port"
    dest: str


def parse_nodes(raw: str | bytes) -> list[dict]:
    """CLUSTER NODES text -> one dict per node: id, addr (host:port), flags, master_id, slots."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        addr = fields[1].split("@", 1)[0].split(",", 1)[0]
        nodes.append({"id": fields[0], "addr": addr, "flags": set(fields[2].split(",")),
                      "master_id": fields[3], "link": fields[7], "slots": fields[8:]})
    return nodes


def cluster_nodes(client) -> list[dict]:
    """CLUSTER NODES as one of the cluster's primaries sees it."""
    node = client.get_primaries()[0]
    return parse_nodes(routing.node_connection(client, node.host, node.port)
                       .execute_command("CLUSTER", "NODES"))


def masters(client) -> list[Master]:
    """Every healthy master, including those that own no slot yet (a new one)."""
    found = []
    for n in cluster_nodes(client):
        flags = n["flags"]
        if "master" in flags and not flags & {"fail", "fail?", "handshake", "noaddr"}:
            host, _, port = n["addr"].rpartition(":")
            # the node itself is the authority on its role: gossip may not yet show that a
            # newly added node was made a replica
            node = routing.node_connection(client, host, int(port), socket_timeout=10)
            role = node.execute_command("ROLE")[0]
            if role in (b"master", "master"):
                found.append(Master(n["id"], host, int(port)))
    return sorted(found, key=lambda m: (m.host, m.port))


def open_slots(raw_nodes: str | bytes) -> list[str]:
    """The slots a node reports half-moved (``[slot->-id]`` / ``[slot-<-id]``) on its own
    ``myself`` line of CLUSTER NODES (only the node itself knows them)."""
    return [s for n in parse_nodes(raw_nodes) if "myself" in n["flags"]
            for s in n["slots"] if s.startswith("[")]


def refuse_open_slots(client, nodes: list[Master]) -> None:
    """A move interrupted earlier leaves a slot open; moving more on top would mix them up."""
    for m in nodes:
        raw = routing.node_connection(client, m.host, m.port, socket_timeout=10).execute_command(
            "CLUSTER", "NODES")
        found = open_slots(raw)
        if found:
            raise RebalanceError(
                f"{m.name} has a half-moved slot {found[0]} (an interrupted move): run "
                f"'redis-cli --cluster fix {m.name}' first")


def plan(pmap: PartitionMap, owner: dict[int, str], master_names: list[str]) -> list[Move]:
    """The fewest whole-partition moves that leave masters differing by at most one.

    Masters holding the most keep the extra partitions (fewest moves); a master gives away
    its highest-index partitions, never its lowest (its model copy's tag); moves come in
    ascending partition order.
    """
    if not master_names:
        raise RebalanceError("the cluster has no healthy master")
    held: dict[str, list[int]] = {m: [] for m in master_names}
    for index, master in owner.items():
        held.setdefault(master, []).append(index)
    unknown = sorted(set(held) - set(master_names))
    if unknown:
        raise RebalanceError(f"partitions are owned by {unknown[0]}, which is not a healthy "
                             "master; fix the cluster first")
    for indices in held.values():
        indices.sort()
    per, extra = divmod(len(pmap), len(master_names))
    ranked = sorted(master_names, key=lambda m: (-len(held[m]), m))
    quota = {m: per + (1 if i < extra else 0) for i, m in enumerate(ranked)}
    given: list[tuple[int, str]] = []
    for m in ranked:
        surplus = len(held[m]) - quota[m]
        if surplus > 0:
            given += [(index, m) for index in held[m][-surplus:]]
    given.sort()
    wanting = [m for m in sorted(master_names) if len(held[m]) < quota[m]]
    moves: list[Move] = []
    for index, source in given:
        dest = wanting[0]
        moves.append(Move(pmap[index], source, dest))
        held[dest].append(index)
        if len(held[dest]) >= quota[dest]:
            wanting.pop(0)
    return moves


def move_slot(client, slot: int, source: Master, dest: Master, others: list[Master], *,
              batch: int = DEFAULT_BATCH, timeout_ms: int = DEFAULT_TIMEOUT_MS,
              on_keys: Callable[[int], None] | None = None) -> int:
    """Move one slot and its keys from ``source`` to ``dest``; returns the keys moved.

    Clients see the slot half-moved (ASK/TRYAGAIN from a multi-key FCALL) for as short a
    time as possible: the keys are listed first, then SETSLOT MIGRATING and every MIGRATE
    batch go to the source in one pipeline, and at the end every master is told the new
    owner at the same moment.
    """
    connect = routing.node_connection
    src = connect(client, source.host, source.port, socket_timeout=timeout_ms / 1000 + 30)
    dst = connect(client, dest.host, dest.port, socket_timeout=30)
    bystanders = [connect(client, m.host, m.port, socket_timeout=10) for m in others
                  if m.node_id not in (source.node_id, dest.node_id)]
    migrate = _Migrate(slot, dest, _migrate_auth(client), batch, timeout_ms)
    moved = 0

    def counted(size: int) -> None:
        nonlocal moved
        moved += size
        if on_keys:
            on_keys(size)

    try:
        for conn in (src, dst, *bystanders):
            conn.ping()  # connected and authenticated before anything is half-moved
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        migrate.keys(src, counted)
        # every master at the same moment (the destination first in line): commands that
        # queued on the source behind MIGRATE meet ASK redirects only until then. A bystander
        # that fails learns the owner from gossip (the destination's higher config epoch).
        failed = _at_once([dst, src, *bystanders], slot, dest)
        if failed[0] is not None:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dest.node_id)
        if failed[1] is not None:
            raise failed[1]
    except redis.RedisError as exc:
        raise RebalanceError(
            f"moving slot {slot} from {source.name} to {dest.name} failed after {moved} keys: "
            f"{exc}; the slot may be left open (run 'redis-cli --cluster fix "
            f"{source.name}', then 'shardqa cluster rebalance' again)") from exc
    return moved


def _migrate_auth(client) -> list:
    """MIGRATE's AUTH/AUTH2 arguments: the destination wants the same user as this client."""
    creds = routing.credentials(client)
    if not creds.get("password"):
        return []
    return (["AUTH2", creds["username"], creds["password"]] if creds.get("username")
            else ["AUTH", creds["password"]])


@dataclass(frozen=True)
class _Migrate:
    """MIGRATE of one slot's keys in batches, pipelined on the source."""

    slot: int
    dest: Master
    auth: list
    batch: int
    timeout_ms: int

    def keys(self, src: redis.Redis, counted: Callable[[int], None]) -> None:
        """SETSLOT MIGRATING and every batch in one pipeline, again for keys made meanwhile."""
        count = int(src.execute_command("CLUSTER", "COUNTKEYSINSLOT", self.slot))
        names = src.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, max(count, 1))
        pipe = src.pipeline(transaction=False)
        pipe.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.dest.node_id)
        while True:
            sizes = self._queue(pipe, names)
            replies = pipe.execute()
            for size in sizes:
                counted(size)
            names = replies[-1]  # keys created while the first batches were sent
            if not names:
                return
            pipe = src.pipeline(transaction=False)

    def _queue(self, pipe, names: list[bytes]) -> list[int]:
        sizes = []
        for i in range(0, len(names), self.batch):
            chunk = names[i:i + self.batch]
            pipe.execute_command("MIGRATE", self.dest.host, self.dest.port, "", 0,
                                 self.timeout_ms, "REPLACE", *self.auth, "KEYS", *chunk)
            sizes.append(len(chunk))
        pipe.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, self.batch)  # what is left
        return sizes


def _at_once(conns: list[redis.Redis], slot: int, dest: Master) -> list[Exception | None]:
    """SETSLOT NODE on several nodes, all sent before any reply is read; per node, the
    error it answered (or None)."""
    held = []
    errors: list[Exception | None] = []
    try:
        for conn in conns:
            c = conn.connection_pool.get_connection()
            held.append((conn, c))
            c.send_command("CLUSTER", "SETSLOT", slot, "NODE", dest.node_id)
        for _, c in held:
            try:
                c.read_response()
                errors.append(None)
            except redis.RedisError as exc:
                errors.append(exc)
    finally:
        for conn, c in held:
            conn.connection_pool.release(c)
    return errors


def rebalance(client, *, prepare: Callable[[Move], None] | None = None,
              batch: int = DEFAULT_BATCH, timeout_ms: int = DEFAULT_TIMEOUT_MS,
              progress: Callable[[Move, int, bool], None] | None = None,
              dry_run: bool = False) -> list[Move]:
    """Plan and carry out the moves; returns them. ``prepare(move)`` runs before each move;
    ``progress(move, keys_moved, finished)`` after each batch of keys and once at its end."""
    if batch < 1:
        raise RebalanceError("the batch size must be at least 1 key")
    routing.refresh(client)
    pmap = partitions.load(client)
    all_masters = masters(client)
    by_name = {m.name: m for m in all_masters}
    moves = plan(pmap, partitions.owners(client, pmap), list(by_name))
    if dry_run:
        return moves
    if moves:
        refuse_open_slots(client, all_masters)
    for dest in sorted({m.dest for m in moves}):
        # a new master has no functions library yet; rank/stats must work the moment it
        # owns a partition
        node = by_name[dest]
        routing.node_connection(client, node.host, node.port).function_load(
            functions.source(), replace=True)
    for move in moves:
        if prepare:
            prepare(move)
        done = [0]

        def on_keys(count: int, move: Move = move, done: list = done) -> None:
            done[0] += count
            if progress:
                progress(move, done[0], False)

        move_slot(client, move.partition.slot, by_name[move.source], by_name[move.dest],
                  all_masters, batch=batch, timeout_ms=timeout_ms, on_keys=on_keys)
        if progress:
            progress(move, done[0], True)
    if moves:
        wait_agreed(client, pmap, {m.partition.index: m.dest for m in moves})
    return moves


def wait_agreed(client, pmap: PartitionMap, expected: dict[int, str],
                timeout: float = 30.0) -> None:
    """Until the client's view of partition owners shows every move (fresh slot cache)."""
    def agreed() -> bool:
        routing.refresh(client)
        owner = partitions.owners(client, pmap)
        return all(owner.get(i) == m for i, m in expected.items())

    until(agreed, timeout, 0.1, error=RebalanceError,
          what=f"the cluster did not agree on the moved slots in {timeout:g}s; check "
               "'shardqa cluster partitions'")
