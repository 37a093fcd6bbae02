"""Where the API listens and how many questions it serves at once: its defaults, defined once.

``shardqa serve`` and ``shardqa up`` / ``demo`` read their option defaults from here; how a
question is asked (timeout, cache TTL, k, scoring) is the asker's (gears.asker constants).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int = 32  # request threads: concurrent questions
    rate_limit: float = 0.0  # requests/s per client address; 0 is off
    #: threads kept free of uncached questions: /health, /metrics and cached answers never
    #: wait behind shard reads (uncached asks beyond ``threads - reserved`` get 503 at once)
    reserved_threads: int = 8
    request_timeout_s: float = 10.0  # a client must send its whole request within this
    connection_limit: int = 1000

    def max_uncached(self, threads: int) -> int:
        return max(1, threads - self.reserved_threads)
