"""cluster.routing is the one user of redis-py's cluster internals: if redis-py changes them,
these tests fail here, loudly, instead of the hot paths failing somewhere else."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import ClusterNode

from cluster import keys, partitions, routing


def test_the_internals_routing_relies_on_exist(cluster):
    client = cluster.client()
    manager = client.nodes_manager
    assert callable(manager.initialize)
    assert callable(manager.get_node_from_slot)
    assert isinstance(manager.slots_cache, dict) and len(manager.slots_cache) == 16384
    holders = manager.slots_cache[0]
    assert isinstance(holders, list) and isinstance(holders[0], ClusterNode)
    assert isinstance(manager.connection_kwargs, dict)
    assert callable(client.get_redis_connection) and callable(client.keyslot)
    assert issubclass(routing.ReplicatedPipeline, redis.client.Pipeline)


def test_owners_agree_with_cluster_slots(cluster):
    client = cluster.client()
    pmap = partitions.load(client)
    owners = partitions.owners(client, pmap)  # CLUSTER SLOTS, live
    for p in pmap:
        assert routing.owner(client, p.slot).name == owners[p.index]
        assert routing.owner_name(client, p.slot) == owners[p.index]
        assert routing.replica_count(client, p.slot) == 0  # the test cluster has no replicas
    key = keys.index_stats(pmap[0].tag)
    client.hset(key, "n", 7)
    assert routing.on_owner(client, key).hget(key, "n") == b"7"  # a plain client: no redirect
    assert routing.on_node(client, owners[0]).hget(key, "n") == b"7"


def test_credentials_are_the_cluster_clients_own(cluster):
    api = cluster.client_as("api")
    creds = routing.credentials(api)
    assert creds["username"] == "api" and creds["password"]
    host, _, port = cluster.masters[0].rpartition(":")
    node = routing.node_connection(api, host, int(port))
    assert node.ping()  # authenticated ...
    with pytest.raises(redis.exceptions.NoPermissionError):
        node.acl_whoami()  # ... as api, not as anyone stronger


def test_refresh_rereads_the_slot_map(cluster):
    client = cluster.client()
    client.nodes_manager.slots_cache.clear()  # as if the map were lost
    assert routing.owner_name(client, 0) is None
    routing.refresh(client)
    assert routing.owner_name(client, 0) in cluster.masters


def test_per_master_sends_one_command_per_partition_and_returns_errors(cluster):
    client = cluster.client()
    pmap = partitions.load(client)
    for p in pmap:
        client.set(keys.index_stats(p.tag) + ":probe", p.index)
    replies = routing.per_master(client, pmap.partitions,
                                 lambda pipe, p: pipe.get(keys.index_stats(p.tag) + ":probe"))
    assert replies == {p.index: str(p.index).encode() for p in pmap}
    client.lpush(keys.index_stats(pmap[1].tag) + ":probe2", "x")
    errors = routing.per_master(client, pmap.partitions[:2],
                                lambda pipe, p: pipe.get(keys.index_stats(p.tag) + ":probe2"))
    assert errors[0] is None and isinstance(errors[1], redis.ResponseError)  # WRONGTYPE


def test_run_on_owner_runs_a_transaction_on_the_owner(cluster):
    client = cluster.client()
    tag = partitions.load(client)[2].tag
    key = keys.ingest_stream(tag)

    def queue(pipe):
        pipe.xadd(key, {"op": "put", "pid": "0123456789abcdef.0"})
        pipe.xlen(key)
        return pipe.execute()

    _, length = routing.run_on_owner(client, key, queue, transaction=True, replicated=True)
    assert length == 1
