"""Fusing ranked lists from several retrievers (BM25, dense) into one.

Two rules, both chosen on data by bench/retrieval_fusion.py:

* reciprocal rank fusion: ``sum_r w_r / (k + rank_r)``; only ranks matter, so retrievers
  whose scores live on different scales (BM25 sums, cosines) mix without calibration;
* weighted score fusion: each list's scores min-max normalized to [0, 1] over the list,
  then ``sum_r w_r * norm_r``; a passage a retriever did not return counts 0 there.

Every fused candidate remembers its 1-based rank in each retriever that found it, which is
what the answer's ``retrieval`` field reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gears.ranking import Ranked

RRF_K = 60


@dataclass
class Fused:
    pid: str
    partition: int
    score: float
    ranks: dict[str, int] = field(default_factory=dict)  # retriever -> 1-based rank
    #: retriever -> its own score (BM25 sum, dense cosine): what an answer's confidence and
    #: bench/open_select.py may weigh besides the fused score
    scores: dict[str, float] = field(default_factory=dict)


def _weights(lists: Mapping[str, list[Ranked]], weights: Mapping[str, float] | None
             ) -> dict[str, float]:
    weights = dict(weights or {})
    unknown = set(weights) - set(lists)
    if unknown:
        raise ValueError(f"weights for retrievers without a list: {', '.join(sorted(unknown))}")
    return {name: float(weights.get(name, 1.0)) for name in lists}


def _collect(lists: Mapping[str, list[Ranked]], contribution) -> list[Fused]:
    fused: dict[str, Fused] = {}
    for name, ranked in lists.items():
        for position, item in enumerate(ranked, start=1):
            entry = fused.get(item.pid)
            if entry is None:
                entry = fused[item.pid] = Fused(item.pid, item.partition, 0.0)
            entry.ranks[name] = position
            entry.scores[name] = float(item.score)
            entry.score += contribution(name, position, item)
    return sorted(fused.values(), key=lambda f: (-f.score, f.pid))


def rrf(lists: Mapping[str, list[Ranked]], k: float = RRF_K,
        weights: Mapping[str, float] | None = None) -> list[Fused]:
    """Reciprocal rank fusion of retriever -> ranked list (best first)."""
    if k < 0:
        raise ValueError(f"the RRF k must not be negative, got {k}")
    w = _weights(lists, weights)
    return _collect(lists, lambda name, position, _item: w[name] / (k + position))


def normalized(ranked: list[Ranked]) -> dict[str, float]:
    """pid -> min-max normalized score over the list (1.0 for a list of one or all equal)."""
    if not ranked:
        return {}
    top = max(r.score for r in ranked)
    low = min(r.score for r in ranked)
    span = top - low
    return {r.pid: (r.score - low) / span if span > 0 else 1.0 for r in ranked}


def weighted(lists: Mapping[str, list[Ranked]],
             weights: Mapping[str, float] | None = None) -> list[Fused]:
    """Weighted sum of min-max normalized scores of retriever -> ranked list."""
    w = _weights(lists, weights)
    norms = {name: normalized(ranked) for name, ranked in lists.items()}
    return _collect(lists, lambda name, _position, item: w[name] * norms[name][item.pid])


# --- what the asker ships with -----------------------------------------------------------------

#: The shipped fusion, chosen by bench/retrieval_fusion.py (best mean R@5 over natural and
#: SQuAD dev questions; bench/results/retrieval-fusion-2026-12-02.json): weighted min-max
#: score fusion, dense 0.55 / BM25 0.45, over each retriever's best 100 candidates
#: (R@5 natural 91.1, SQuAD dev 92.4; min-max anchors at each list's last score, so the
#: candidate depth is part of the method).
METHOD = "weighted"
METHODS = ("weighted", "rrf")
DENSE_WEIGHT = 0.55
CANDIDATES = 100


def fuse(bm25: list[Ranked], dense: list[Ranked], *, method: str = METHOD,
         dense_weight: float = DENSE_WEIGHT) -> list[Fused]:
    """BM25 and dense candidate lists fused by ``method`` (the shipped one by default)."""
    lists = {"bm25": bm25, "dense": dense}
    if method == "weighted":
        return weighted(lists, {"dense": dense_weight, "bm25": 1.0 - dense_weight})
    if method == "rrf":
        return rrf(lists, RRF_K, {"dense": dense_weight, "bm25": 1.0 - dense_weight})
    raise ValueError(f"unknown fusion method {method!r}; one of {', '.join(METHODS)}")
