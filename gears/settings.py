"""The shard worker's settings: the one place its defaults are defined.

``shardqa worker``'s options read their defaults from here (``DEFAULTS``), as arq's do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def default_threads(workers: int = 1) -> int:
    """Torch threads of each of ``workers`` workers sharing this machine: the cores divided
    among them (at least one). Measured both ways on 2 cores: two 2-thread workers beat two
    1-thread ones on uncached questions (bench/: int8 k=5 p50 48 vs 67 ms, 10.4 vs 9.3 q/s at
    concurrency 16), but three 2-thread workers under the soak's mixed load tripled its p99
    (380 vs 121 ms): oversubscribed cores make the slowest questions slower."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@dataclass(frozen=True)
class WorkerSettings:
    max_batch: int = 16  # requests per batch (RedisAI's BATCHSIZE)
    max_wait_ms: float = 2.0  # how long a partial batch may wait for more (MINBATCHTIMEOUT)
    max_batch_pairs: int = 8  # (question, window) pairs per forward pass, and per reply group
    ingest_batch: int = 256  # ingest entries per partition per indexing step
    #: passages embedded per forward pass: small batches keep the activations in cache
    #: (int8, 1 thread, cut at 128 tokens: 103 passages per CPU second at 8, 99 at 32, 74 at
    #: 64; bench/results/hybrid-speed-2026-12-06.json, ``embedding``)
    embed_batch: int = 8
    #: passages are cut at this many tokens before embedding (None: the encoder's own
    #: max_seq_len, 256 for all-MiniLM-L6-v2, which was trained at 128 word pieces): 1.33x
    #: fewer CPU seconds a passage; fused recall@5 natural 91.1 -> 91.1, SQuAD dev 92.4 ->
    #: 92.0 (bench/results/retrieval-fusion-2026-12-06-128.json)
    embed_max_tokens: int | None = 128
    #: passages a re-embed step embeds (gears/reembed.py); a question arriving meanwhile
    #: waits for it: ~1 s at MiniLM int8's ~35 passages/s on 2 busy cores
    reembed_batch: int = 32
    reembed_every_s: float = 1.0  # under a steady load of work, a re-embed step this often
    threads: int | None = None  # torch threads for the reader (None: torch's default)
    claim_idle_ms: int = 15000  # pending entries of other consumers idle this long are claimed
    max_deliveries: int = 3  # an entry delivered this often without an ack is dead-lettered
    max_value_bytes: int = 64 << 10  # a request or ingest field longer than this is poison
    dead_letter_cap: int = 10_000  # entries kept per partition's dead-letter stream
    idle_poll_s: float = 0.5
    heartbeat_s: float = 1.0
    refresh_s: float = 2.0
    model_retry_s: float = 1.0  # first wait before loading a missing/corrupt model again
    model_retry_max_s: float = 30.0  # the longest wait between two such attempts
    keymiss_threads: int = 4
    # key-miss answers are bounded: a flood of GETs of new answer keys must not make the
    # worker compute (and store) an answer for each. A token bucket: this many new answers a
    # second, up to ``keymiss_burst`` at once, at most ``keymiss_pending`` waiting or being
    # computed; misses beyond that are dropped and counted (``keymiss_dropped``)
    keymiss_rate: float = 20.0
    keymiss_burst: int = 20
    keymiss_pending: int = 32
    answer_ttl_s: int = 3600


#: the defaults, for options and docs that show them
DEFAULTS = WorkerSettings()

