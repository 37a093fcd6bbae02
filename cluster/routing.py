"""Routing: which master owns a slot, and talking to that master directly.

redis-py's cluster client routes every command by itself, which costs about as much as a
GET (bench: 0.29 vs 0.15 ms) and an extra COMMAND GETKEYS round trip for FCALL in a
pipeline. The hot paths (the asker's cache GET, the ranking fan-out, the loader's batches,
the worker's model copy) talk to the owning master's plain client instead, found in the
cluster client's own slot cache.

This is the only module that touches redis-py's cluster internals (``nodes_manager``: its
``slots_cache``, ``initialize``, ``connection_kwargs``, ``get_node_from_slot``);
tests/test_routing.py fails loudly if redis-py changes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import redis
from redis.cluster import RedisCluster

from cluster.partitions import Partition

log = logging.getLogger("shardqa.routing")

#: how long ``per_master`` keeps retrying while slots move or a failover is under way
RETRY_FOR_S = 2.0
#: errors that mean "the slot map is out of date or the node is going away": refresh, retry
STALE_ROUTE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.MovedError,
               redis.exceptions.AskError, redis.exceptions.ClusterDownError,
               redis.exceptions.TryAgainError)
#: what a cluster in trouble raises (node down, failover under way, whole cluster restarting)
CLUSTER_TROUBLE = (redis.RedisError, redis.exceptions.RedisClusterException)
_REDIRECTS = (redis.exceptions.MovedError, redis.exceptions.AskError,
              redis.exceptions.TryAgainError)
#: error replies that mean the slot is elsewhere or moving (in a transaction: EXECABORT)
_REDIRECT_REPLIES = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "EXECABORT")


def refresh(client: RedisCluster) -> None:
    """Read the slot map again from the cluster (after a failover, a rebalance, MOVED)."""
    client.nodes_manager.initialize()


def owner(client: RedisCluster, slot: int):
    """The node that owns ``slot`` in the client's slot map.

    While another thread rebuilds the map (a rebalance under way), redis-py may hand back no
    node at all: that is a stale route like MOVED, so say so and let the caller retry."""
    node = client.nodes_manager.get_node_from_slot(slot)
    if node is None:
        raise redis.exceptions.TryAgainError(f"no owner of slot {slot} in the slot map yet")
    return node


def owner_name(client: RedisCluster, slot: int) -> str | None:
    """"host:port" of the master owning ``slot`` in the slot cache, None if none is known."""
    holders = client.nodes_manager.slots_cache.get(slot)
    return holders[0].name if holders else None


def replica_count(client: RedisCluster, slot: int) -> int:
    """How many replicas the slot cache lists for ``slot``'s master."""
    return max(0, len(client.nodes_manager.slots_cache.get(slot, [])) - 1)


def on_owner(client: RedisCluster, key: str) -> redis.Redis:
    """A plain client on the master that owns ``key``'s slot."""
    return client.get_redis_connection(owner(client, client.keyslot(key)))


def on_node(client: RedisCluster, name: str) -> redis.Redis:
    """A plain client on the cluster node called ``name`` ("host:port")."""
    node = client.get_node(node_name=name)
    if node is None:
        raise KeyError(f"{name} is not a node of this cluster")
    return client.get_redis_connection(node)


def credentials(client: RedisCluster) -> dict:
    """username/password the cluster client connects with (for plain node clients)."""
    base = client.nodes_manager.connection_kwargs
    return {k: base[k] for k in ("username", "password") if base.get(k)}


def node_connection(client: RedisCluster, host: str, port: int, **kwargs) -> redis.Redis:
    """A new plain client for any node (one not in the slot map yet, too), same user."""
    return redis.Redis(host=host, port=port, **credentials(client), **kwargs)


def per_master(client: RedisCluster, partitions: Sequence[Partition],
               build: Callable[[object, Partition], None], *, many: bool = False
               ) -> dict[int, object]:
    """``build(pipe, partition)`` queues one command per partition; they go out as one
    pipeline per master (one round trip each, all masters at once). Returns partition
    index -> reply.

    ``many``: ``build`` may queue several commands (or none) per partition, and each reply is
    the list of that partition's replies, in the order they were queued.

    MOVED refreshes the slot cache; ASK and TRYAGAIN (a slot being migrated right now) and a
    node going away are retried for up to ``RETRY_FOR_S``. A reply that is any other error
    is returned as the exception object, not raised.
    """
    deadline = time.monotonic() + RETRY_FOR_S
    pause = 0.005
    while True:
        try:
            return _per_master_once(client, partitions, build, many)
        except STALE_ROUTE:
            if time.monotonic() > deadline:
                raise
            refresh(client)
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def _per_master_once(client, partitions, build, many: bool = False) -> dict[int, object]:
    by_node: dict[str, tuple[object, list[Partition]]] = {}
    for p in partitions:
        node = owner(client, p.slot)
        by_node.setdefault(node.name, (node, []))[1].append(p)
    pipes = []
    for node, parts in by_node.values():
        pipe = client.get_redis_connection(node).pipeline(transaction=False)
        counts = []
        for p in parts:
            before = len(pipe)
            build(pipe, p)
            counts.append(len(pipe) - before)
        pipes.append((pipe, parts, counts))
    replies: dict[int, object] = {}
    for (_, parts, counts), results in zip(pipes, _execute_all([p for p, _, _ in pipes]),
                                           strict=True):
        redirect = next((r for r in results if isinstance(r, _REDIRECTS)), None)
        if redirect is not None:
            raise redirect
        if not many:
            replies.update(zip((p.index for p in parts), results, strict=True))
            continue
        at = 0
        for p, count in zip(parts, counts, strict=True):
            replies[p.index] = results[at:at + count]
            at += count
    return replies


#: threads that wait on the other masters' replies while the caller waits on the first one
_FAN_OUT = ThreadPoolExecutor(max_workers=32, thread_name_prefix="shardqa-fan-out")


def _execute_all(pipes: list) -> list[list]:
    """Every master's pipeline at once, so a fan-out waits for the slowest master rather
    than for the sum of them all (each master scores its own partitions in parallel).
    A stale route in any of them raises, after all have finished."""
    def run(pipe) -> list:
        return pipe.execute(raise_on_error=False) if len(pipe) else []

    later = [_FAN_OUT.submit(run, pipe) for pipe in pipes[1:]]
    first = None
    try:
        results = [run(pipes[0])] if pipes else []
    except Exception as exc:  # noqa: BLE001 - raised once the others are done too
        first, results = exc, []
    for future in later:
        try:
            results.append(future.result())
        except Exception as exc:  # noqa: BLE001 - the first error wins, as before
            first = first or exc
    if first is not None:
        raise first
    return results


def run_on_owner(client: RedisCluster, key: str, queue: Callable[[object], object], *,
                 transaction: bool, replicated: bool = False, wait_ms: int = 5000):
    """``queue(pipeline)`` on a plain pipeline straight to the master that owns ``key``'s
    slot (no per-command routing: several times faster); if slots moved meanwhile, refresh
    the slot map and run it again through the cluster client, which follows redirects.

    ``replicated``: if the master has replicas, WAIT (up to ``wait_ms``) for one to hold
    what was written. ``queue`` executes the pipeline and returns what the caller needs."""
    slot = client.keyslot(key)
    for attempt in range(2):
        conn = client.get_redis_connection(owner(client, slot))
        pipe = (ReplicatedPipeline(conn, replicas=1, wait_ms=wait_ms)
                if replicated and replica_count(client, slot) > 0
                else conn.pipeline(transaction=transaction))
        try:
            return queue(pipe)
        except redis.ResponseError as exc:
            redirected = isinstance(exc, redis.exceptions.ExecAbortError)
            if not (redirected or str(exc).startswith(_REDIRECT_REPLIES)):
                raise
        except redis.ConnectionError:
            if attempt:
                raise
        refresh(client)
    return queue(client.pipeline(transaction=transaction))


class ReplicatedPipeline(redis.client.Pipeline):
    """A transaction pipeline that, after EXEC, sends ``WAIT replicas`` on the same
    connection (WAIT counts only the writes of the connection it is sent on)."""

    def __init__(self, node_client: redis.Redis, replicas: int, wait_ms: int):
        super().__init__(node_client.connection_pool, node_client.response_callbacks,
                         transaction=True, shard_hint=None)
        self.replicas, self.wait_ms = replicas, wait_ms
        self._holding = False

    def reset(self) -> None:
        held = self.connection if self._holding else None
        self.connection = None if self._holding else self.connection
        super().reset()
        self.connection = held

    def execute(self, raise_on_error: bool = True) -> list:
        self.connection = self.connection_pool.get_connection()
        self._holding = True
        try:
            result = super().execute(raise_on_error)
            conn = self.connection
            conn.send_command("WAIT", self.replicas, self.wait_ms)
            acked = conn.read_response()
            if acked < self.replicas:
                log.warning("a write is on the master but no replica acknowledged it within "
                            "%d ms (replica down?)", self.wait_ms)
            return result
        finally:
            self._holding = False
            if self.connection is not None:
                self.connection_pool.release(self.connection)
                self.connection = None
