"""How the asker chooses the answer across the passages read, and how sure it says it is.

The reader's span scores (start + end logit) are poorly comparable across passages, so a
candidate span scores its span score plus ``weight`` x a retrieval feature of its passage.
Over every candidate span the workers returned for the question (each passage's best and
next distinct spans), softmax(score / T) gives each candidate a probability, and the
candidates with the same text (SQuAD normalisation: the same answer found in several
passages) pool theirs into the answer's. The answer with the highest pooled probability at
``choice_temperature`` wins (None: the best score alone, no pooling), shown at its
best-scoring candidate; its confidence is its pooled probability at ``temperature``.
Weight and choice temperature are fitted for F1, then the temperature for calibration, on
open-mode candidates recorded from a real stack (bench/open_select.py). This module is
their one owner: the asker's choice, the confidence the API, CLI, page and Python API show,
``shardqa eval`` and the bench all read them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from gears.fusion import Fused
from models.calibration import open_probabilities, pooled

#: retrieval features an answer score can weigh: the passage's retrieval score relative to
#: the best passage's ("relative"), the fused score as it is ("fused"), the passage's dense
#: cosine to the question ("dense", 0 where VSIM did not return it) and 1 / its place in the
#: fused list ("reciprocal_rank")
FORMS = ("relative", "fused", "dense", "reciprocal_rank")


@dataclass(frozen=True)
class Selection:
    """The answer-choice rule and its confidence temperature."""

    weight: float
    temperature: float = 1.0  # of the confidence
    form: str = "relative"
    choice_temperature: float | None = None  # of the pooled choice (None: best score)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"retrieval feature must be one of {', '.join(FORMS)}")
        if self.temperature <= 0 or (self.choice_temperature or 1.0) <= 0:
            raise ValueError("temperatures must be positive")

    def with_weight(self, weight: float | None) -> Selection:
        """This rule with ``weight`` instead (None: unchanged), for a --retrieval-weight."""
        return self if weight is None else replace(self, weight=float(weight))

    def feature(self, passage: Fused, position: int, top: float) -> float:
        """The retrieval feature of ``passage``, ``position``-th (1-based) in the fused list
        whose best score is ``top``."""
        if self.form == "relative":
            return passage.score / top if top > 0 else 0.0
        if self.form == "fused":
            return passage.score
        if self.form == "dense":
            return float(passage.scores.get("dense", 0.0))
        return 1.0 / position

    def score(self, span_score: float, feature: float) -> float:
        """An answer's score: span score + weight x its passage's feature."""
        return span_score + self.weight * feature

    def answers(self, scores: Sequence[float], keys: Sequence[str]) -> list[tuple[int, float]]:
        """The distinct answers, best first: (index of the answer's shown candidate, its
        confidence). ``scores``: every candidate's score, best first (ties already broken);
        ``keys``: their normalised texts (an empty one is an answer of its own)."""
        if not len(scores):
            return []
        confidence = pooled(open_probabilities(scores, self.temperature), keys)
        choice = (pooled(open_probabilities(scores, self.choice_temperature), keys)
                  if self.choice_temperature else scores)
        order = sorted(range(len(scores)), key=lambda i: -choice[i])  # stable: score order
        out, seen = [], set()
        for i in order:
            if keys[i] and keys[i] in seen:
                continue
            seen.add(keys[i])
            out.append((i, float(confidence[i])))
        return out


#: BM25 alone: relative BM25 score x 4 (chosen by bench/floor_sweep.py, see
#: gears.asker.MIN_RANK_RATIO); the temperature fitted by ``python -m bench.open_select fit
#: --retrieval bm25 --temperature-only --floor 0.85`` on SQuAD dev
#: (bench/results/open-select-bm25-2026-12-06.json): ECE 9.0 -> 3.3 SQuAD dev, 19.4 -> 11.3
#: natural (held out)
BM25 = Selection(weight=4.0, temperature=4.0471, form="relative")

#: hybrid (the default), from ``python -m bench.open_select fit`` on SQuAD dev (1,075 q;
#: bench/results/open-select-2026-12-06.json; natural questions held out). Fitting the choice
#: too (relative fused x 14, answers pooled at 2.83) gained 1.1 F1 on SQuAD dev but lost 4.7
#: on the held-out natural set (58.5 -> 53.8), so the choice stays relative fused x 8, no
#: pooling, and only the temperature is fitted: ECE 11.2 -> 7.7 SQuAD dev, 20.8 -> 18.1
#: natural (held out), F1 unchanged.
HYBRID = Selection(weight=8.0, temperature=3.153, form="relative")


def default(mode: str) -> Selection:
    """The shipped rule for a question ranked in ``mode`` ("hybrid" or "bm25")."""
    return HYBRID if mode == "hybrid" else BM25
