"""Send one command per partition, grouped into one pipeline per master.

redis-py's cluster pipeline resolves FCALL keys with an extra COMMAND GETKEYS round trip;
here the partition -> master map comes from the client's own slot cache, so a fan-out over
every partition costs exactly one round trip per master. A MOVED/ASK/connection error
(slots moved, failover) refreshes the slot cache and retries for a moment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import redis
from redis.cluster import RedisCluster

from cluster.partitions import Partition

RETRY_FOR_S = 2.0


def run(client: RedisCluster, partitions: Sequence[Partition],
        build: Callable[[object, Partition], None]) -> dict[int, object]:
    """``build(pipe, partition)`` queues one command; returns partition index -> reply.

    MOVED refreshes the slot cache; ASK and TRYAGAIN (a slot being migrated right now) and
    a node going away are retried for up to ``RETRY_FOR_S``. A reply that is any other
    error is returned as the exception object, not raised.
    """
    deadline = time.monotonic() + RETRY_FOR_S
    pause = 0.005
    while True:
        try:
            return _run_once(client, partitions, build)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.MovedError,
                redis.exceptions.AskError, redis.exceptions.ClusterDownError,
                redis.exceptions.TryAgainError):
            if time.monotonic() > deadline:
                raise
            client.nodes_manager.initialize()
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def _run_once(client, partitions, build) -> dict[int, object]:
    by_node: dict[str, tuple[object, list[Partition]]] = {}
    for p in partitions:
        node = client.nodes_manager.get_node_from_slot(p.slot)
        entry = by_node.get(node.name)
        if entry is None:
            entry = (node, [])
            by_node[node.name] = entry
        entry[1].append(p)
    replies: dict[int, object] = {}
    for node, parts in by_node.values():
        pipe = client.get_redis_connection(node).pipeline(transaction=False)
        for p in parts:
            build(pipe, p)
        results = pipe.execute(raise_on_error=False)
        for p, result in zip(parts, results, strict=True):
            if isinstance(result, (redis.exceptions.MovedError, redis.exceptions.AskError,
                                   redis.exceptions.TryAgainError)):
                raise result
            replies[p.index] = result
    return replies
