"""Following the shard: which node serves, which partitions it owns."""

from __future__ import annotations

from cluster import partitions
from gears.follower import Shard, ShardFollower


def table(*rows):
    return {(lo, hi): {"primary": p, "replicas": list(r)} for lo, hi, p, r in rows}


def test_follower_stays_home_then_follows_a_promoted_replica():
    f = ShardFollower("h:1")
    before = table((0, 99, "h:1", ["h:2"]), (100, 199, "o:1", ["o:2"]))
    assert f.master(before) == "h:1"
    after = table((0, 99, "h:2", []), (100, 199, "o:1", ["o:2"]))  # h:1 failed over, gone
    assert f.master(after) == "h:2"
    assert f.master(table((100, 199, "o:1", []))) == "h:1"  # the shard holds no slots


def test_shard_owns_the_partitions_its_master_owns(cluster):
    client = cluster.client()
    pmap = partitions.load(client)
    owners = partitions.owners(client, pmap)
    for master in cluster.masters:
        shard = Shard(cluster.target, client, master, pmap)
        change = shard.refresh()
        mine = {i for i, m in owners.items() if m == master}
        assert {p.index for p in shard.owned} == mine == change.acquired
        assert change.changed and not change.followed and shard.serving == master
        assert shard.node.ping()
        again = shard.refresh()
        assert not again.changed and not again.acquired
