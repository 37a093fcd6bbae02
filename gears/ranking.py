"""Ranking a question over every partition with BM25 and global term statistics.

Two fan-outs, each one round trip per master: ``stats`` gathers every partition's passage
count, total length and the query terms' document frequencies (summed: global IDF and mean
length), then ``rank`` scores each partition inside Redis with those global weights, so
scores from different partitions compare and the best k overall can be taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cluster import keys, routing
from cluster.partitions import PartitionMap
from gears import analyzer

K1 = 1.2
B = 0.75
#: postings read per query term and partition, highest tf first (0: all of them); every
#: passage found is still scored exactly. bench/ (100 dev questions, 100k passages): rank
#: p50 28 -> 21 ms, top-5 overlap with exact 1.00; nothing changes at 10k.
POSTINGS_CAP = 100


@dataclass(frozen=True)
class Ranked:
    pid: str
    partition: int
    score: float


@dataclass
class GlobalStats:
    passages: int
    avgdl: float
    df: dict[str, int]

    def idf(self, term: str) -> float:
        """BM25 IDF (Lucene's form, never negative)."""
        df = self.df.get(term, 0)
        return math.log(1 + (self.passages - df + 0.5) / (df + 0.5))


def global_stats(client, pmap: PartitionMap, terms: list[str]) -> GlobalStats:
    replies = routing.per_master(client, pmap.partitions, lambda pipe, p: pipe.fcall_ro(
        "stats", 2, keys.index_stats(p.tag), keys.index_df(p.tag), *terms))
    passages = 0
    total = 0
    df = dict.fromkeys(terms, 0)
    for reply in replies.values():
        if isinstance(reply, Exception):
            raise reply
        passages += int(reply[0])
        total += int(reply[1])
        for term, value in zip(terms, reply[2:], strict=True):
            df[term] += int(value)
    return GlobalStats(passages, (total / passages) if passages else 1.0, df)


@dataclass(frozen=True)
class RankQuery:
    """One question's BM25 ``rank`` call with its global weights, ready to queue on every
    partition (alone, or in the same per-master round trip as the dense search)."""

    terms: list[str]
    weights: list[str]
    avgdl: float
    k: int
    cap: int

    def queue(self, pipe, p) -> None:
        pipe.fcall_ro("rank", 1 + len(self.terms), keys.index_lengths(p.tag),
                      *[keys.index_term(p.tag, t) for t in self.terms],
                      self.k, K1, B, repr(self.avgdl), self.cap, *self.weights)


def prepare(client, pmap: PartitionMap, question: str, k: int = 5,
            stats: GlobalStats | None = None, cap: int | None = None) -> RankQuery | None:
    """The rank call of ``question`` (one stats fan-out); None if none of its terms is in
    the corpus (BM25 finds nothing)."""
    terms = analyzer.query_terms(question)
    if not terms:
        return None
    stats = stats or global_stats(client, pmap, terms)
    terms = [t for t in terms if stats.df.get(t)]
    if not terms or not stats.passages:
        return None
    return RankQuery(terms, [repr(stats.idf(t)) for t in terms], stats.avgdl, k,
                     POSTINGS_CAP if cap is None else cap)


def parse(index: int, reply) -> list[Ranked]:
    """A partition's ``rank`` reply [pid, score, ...] as Ranked (an error reply raises)."""
    return as_ranked(keys_of(index, reply))


#: a candidate as a sort key: (-score, passage id as the server sent it, partition). Python
#: orders these as ``best`` orders Ranked (a passage id's UTF-8 bytes sort as its text
#: does), so a question's thousands of replied pairs are sorted as plain tuples and only the
#: ones kept become Ranked (a Ranked of every pair took 3.0 of hybrid retrieval's 11.3 ms
#: p50; bench/results/hybrid-rank-2026-12-06.json)
Key = tuple[float, bytes | str, int]


def keys_of(index: int, reply) -> list[Key]:
    """A partition's ``rank`` reply as sort keys, best first (an error reply raises)."""
    if isinstance(reply, Exception):
        raise reply
    return [(-float(score), pid, index) for pid, score in zip(reply[::2], reply[1::2],
                                                               strict=True)]


def as_ranked(found: list[Key]) -> list[Ranked]:
    """Sort keys as Ranked, in the order given."""
    return [Ranked(pid.decode() if isinstance(pid, bytes) else pid, index, -negative)
            for negative, pid, index in found]


def best_keys(found: list[Key], k: int) -> list[Ranked]:
    """The best ``k`` of sort keys as Ranked, best first (ties by passage id, as ``best``)."""
    return as_ranked(sorted(found)[:k])


def best(found: list[Ranked], k: int) -> list[Ranked]:
    """The best ``k`` of candidates from every partition, best first (ties by passage id)."""
    return sorted(found, key=lambda r: (-r.score, r.pid))[:k]


def rank(client, pmap: PartitionMap, question: str, k: int = 5,
         stats: GlobalStats | None = None, cap: int | None = None) -> list[Ranked]:
    """The best ``k`` passages across the cluster, best first (ties by passage id)."""
    query = prepare(client, pmap, question, k, stats, cap)
    if query is None:
        return []
    replies = routing.per_master(client, pmap.partitions, query.queue)
    return best([r for index, reply in replies.items() for r in parse(index, reply)], k)


def above_floor(ranked: list, ratio: float) -> list:
    """The candidates (Ranked, or fused ones) scoring at least ``ratio`` x the best one
    (best first, as given).

    Reading a passage that ranks far below the best costs a full reader pass and rarely
    gives the answer; bench/ measures the speed and F1 of the ratio.
    """
    if not ranked or ratio <= 0:
        return ranked
    floor = ratio * ranked[0].score
    return [r for r in ranked if r.score >= floor]
