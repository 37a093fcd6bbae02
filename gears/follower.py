"""Which node of its shard the worker serves from, and which partitions that node owns.

A shard is a master and its replicas. The worker starts beside one of its nodes (home);
after a failover that node is a replica or gone and a former replica is master: the worker
follows it. Slots moved to another shard by a rebalance are simply no longer its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis

from cluster import partitions, routing
from cluster.connection import Target, node_client
from cluster.partitions import Partition, PartitionMap

log = logging.getLogger("shardqa.worker")

NODE_TIMEOUT_S = 10


class ShardFollower:
    """The shard's master in a slot table.

    The shard's members are learned from every slot table seen, so a dead home node is
    still recognised through the replica that replaced it.
    """

    def __init__(self, home: str):
        self.home = home
        self.nodes: set[str] = {home}

    def master(self, table: dict[tuple[int, int], dict]) -> str:
        """The shard's master in this slot table (home while the shard holds no slots)."""
        primaries: set[str] = set()
        for info in table.values():
            members = {info["primary"], *info["replicas"]}
            if members & self.nodes:
                self.nodes |= members
                primaries.add(info["primary"])
        if not primaries or self.home in primaries:
            return self.home
        return sorted(primaries)[0]


@dataclass
class OwnershipChange:
    """What one look at the slot table changed."""

    followed: bool = False  # the shard's master is another node now (failover)
    changed: bool = False  # the owned partitions differ from before
    acquired: set[int] = field(default_factory=set)  # partitions newly ours


class Shard:
    """The worker's shard: the node that is master now, a plain client on it, its partitions."""

    def __init__(self, target: Target, client, home: str, pmap: PartitionMap):
        self.target, self.client, self.pmap = target, client, pmap
        self.follower = ShardFollower(home)
        self.serving = home
        self.node: redis.Redis = _client_on(target, home)
        self.owned: list[Partition] = []

    def refresh(self) -> OwnershipChange:
        """Read the slot table; follow a failover; recompute the partitions owned."""
        table = partitions.slot_table(self.client)
        change = OwnershipChange()
        serving = self.follower.master(table)
        if serving != self.serving:
            log.warning("shard master is now %s (was %s); following it", serving, self.serving)
            self.serving, self.node = serving, _client_on(self.target, serving)
            self.owned = []  # re-read our own pending entries on the new master
            change.followed = True
        owned = [p for p in self.pmap if _owner(table, p.slot) == self.serving]
        if owned != self.owned:
            log.info("serving partitions %s", [p.index for p in owned])
            # partitions moved: store.tag_for finds our model copy in the slot cache
            routing.refresh(self.client)
            change.changed = True
            change.acquired = {p.index for p in owned} - {p.index for p in self.owned}
            self.owned = owned
        return change


def _client_on(target: Target, name: str) -> redis.Redis:
    host, _, port = name.rpartition(":")
    return node_client(target, host, int(port), socket_timeout=NODE_TIMEOUT_S)


def _owner(table: dict[tuple[int, int], dict], slot: int) -> str | None:
    """The master that owns ``slot`` in a slot table."""
    for (lo, hi), info in table.items():
        if lo <= slot <= hi:
            return info["primary"]
    return None
