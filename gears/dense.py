"""Dense retrieval: the question's embedding against every partition's vector set (VSIM).

One fan-out, one round trip per master (cluster.routing.per_master): each partition's vector set
``keys.vectors(tag)`` returns its ``k`` nearest passages, and the best ``k`` overall are
kept. The question is embedded by the caller (models.encoder), once. Scores are cosine
similarities: VSIM reports ``(1 + cosine) / 2``, which is mapped back so that dense scores
read like the embeddings they come from.
"""

from __future__ import annotations

import numpy as np

from cluster import keys, routing
from cluster.partitions import PartitionMap
from gears.ranking import Key, Ranked, as_ranked, best

#: Redis' HNSW search breadth when VSIM is given no EF (VSET_DEFAULT_SEARCH_EF in its
#: vector-set module); a search explores max(EF, COUNT) nodes
DEFAULT_EF = 100


def vector_blob(vector: np.ndarray) -> bytes:
    """The FP32 blob VADD and VSIM take: little-endian float32."""
    return np.ascontiguousarray(vector, dtype="<f4").reshape(-1).tobytes()


def search(client, pmap: PartitionMap, vector: np.ndarray, k: int = 5,
           ef: int | None = None) -> list[Ranked]:
    """The ``k`` passages nearest to ``vector`` across the cluster, best first (ties by id).

    ``ef``: the HNSW search breadth (VSIM's EF); None keeps the server's default. A
    partition without a vector set contributes nothing; a server without vector sets
    (Redis 7) raises its "unknown command" error (check cluster.capabilities first).
    """
    query = VectorQuery(vector_blob(vector), k, ef)
    replies = routing.per_master(client, pmap.partitions, query.queue)
    return best([r for index, reply in replies.items() for r in parse(index, reply)], k)


class VectorQuery:
    """One VSIM call per partition (alone, or in the BM25 rank's round trip)."""

    #: a partition's vector set is small (hundreds to thousands of vectors): searching it in
    #: Redis' main thread costs less than handing each of the 16 searches to a background
    #: thread and back (bench/results/hybrid-speed-2026-12-06.json, ``fanout``)
    options: tuple[str, ...] = ("NOTHREAD",)

    def __init__(self, blob: bytes, k: int, ef: int | None = None):
        self.blob, self.k = blob, int(k)
        self.extra = ["EF", int(ef)] if ef else []

    def queue(self, pipe, p) -> None:
        pipe.execute_command("VSIM", keys.vectors(p.tag), "FP32", self.blob, "WITHSCORES",
                             "COUNT", self.k, *self.extra, *self.options)


def parse(index: int, reply) -> list[Ranked]:
    """A partition's VSIM reply as Ranked with cosine scores (an error reply raises)."""
    return as_ranked(keys_of(index, reply))


def keys_of(index: int, reply) -> list[Key]:
    """A partition's VSIM reply as ranking sort keys (``-cosine``, id, partition), best first
    (an error reply raises). VSIM reports ``(1 + cosine) / 2``; redis-py gives the WITHSCORES
    reply as a dict (RESP2 callback or RESP3 map) or a flat [member, score, ...] list."""
    if isinstance(reply, Exception):
        raise reply
    if not reply:
        return []
    items = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2],
                                                              strict=True)
    return [(-(2.0 * float(score) - 1.0), pid, index) for pid, score in items]
