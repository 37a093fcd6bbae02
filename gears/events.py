"""The master's keyspace events the worker wakes on: ``xadd`` (work arrived) and
``keymiss`` (a redis-cli GET of an answer key missed).

Pub/sub is at-most-once, so the worker also polls slowly; an event only saves a wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

log = logging.getLogger("shardqa.worker")

KEYMISS_CHANNEL = "__keyevent@0__:keymiss"
XADD_CHANNEL = "__keyevent@0__:xadd"


class ShardEvents:
    """Subscription to one node's events; ``wait`` dispatches key misses as they come."""

    def __init__(self, on_keymiss: Callable[[bytes | str], None]):
        self.on_keymiss = on_keymiss
        self._node: redis.Redis | None = None
        self._pubsub = None

    def attach(self, node: redis.Redis) -> None:
        """Listen on ``node`` (at start, after a failover, after a reconnect)."""
        self._node, self._pubsub = node, None
        self._subscribe()

    def _subscribe(self) -> None:
        if self._pubsub is not None or self._node is None:
            return
        try:
            ps = self._node.pubsub(ignore_subscribe_messages=True)
            ps.subscribe(KEYMISS_CHANNEL, XADD_CHANNEL)
            self._pubsub = ps
        except redis.RedisError as exc:
            log.warning("cannot subscribe to keyspace events (%s); polling", exc)
            self._pubsub = None

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for an event; dispatch key misses. True if an xadd came."""
        if self._pubsub is None:
            self._subscribe()
            if self._pubsub is None:
                time.sleep(min(timeout, 0.05))
                return False
        woke = False
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                msg = self._pubsub.get_message(timeout=max(0.0, remaining))
            except (redis.ConnectionError, redis.TimeoutError):
                self._pubsub = None
                return woke
            if msg is None:
                return woke
            channel = msg["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            if channel == KEYMISS_CHANNEL:
                self.on_keymiss(msg["data"])
            else:
                woke = True
                deadline = time.monotonic()  # drain what is queued, then go to work
