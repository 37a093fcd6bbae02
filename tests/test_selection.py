"""Issues 13 and 17: the open-mode answer choice across passages and its confidence, fitted on
recorded candidates (models.calibration, gears.selection; bench/open_select.py fits them)."""

from __future__ import annotations

import numpy as np
import pytest

from gears import selection
from gears.fusion import Fused
from models.calibration import (
    choose,
    fit_open_choice,
    fit_open_temperature,
    open_probabilities,
    pooled,
    reliability,
)


def synthetic(rng, n: int) -> list[tuple]:
    """Questions whose right answer is in the passage retrieval ranks first, while a
    distractor passage read with it often has a higher span score: (span scores, features,
    keys, F1, EM) as bench/open_select.py gives them."""
    out = []
    for i in range(n):
        right, wrong = rng.normal(8.0, 1.0), rng.normal(8.5, 1.0)
        span = np.array([wrong, right, right - 3.0])
        feature = np.array([0.3, 1.0, 1.0])  # the distractor's passage ranks far below
        keys = [f"wrong {i}", f"right {i}", f"other {i}"]
        f1 = np.array([0.0, 1.0, 0.0])
        out.append((span, feature, keys, f1, f1.copy()))
    return out


def test_the_fit_prefers_the_retrieval_favoured_span():
    rng = np.random.default_rng(0)
    questions = synthetic(rng, 200)
    # the reader alone picks the distractor most of the time
    alone = np.mean([q[3][choose(q[0], q[1], q[2], 0.0, 1.0)[0]] for q in questions])
    assert alone < 0.5
    weight, choice_t, f1 = fit_open_choice([q[:4] for q in questions],
                                           weights=(0.0, 1.0, 2.0, 4.0, 8.0))
    assert weight >= 2.0 and f1 > 0.95 > alone
    # one question where the distractor's span beats the right one by 1.5: weight turns it
    span, feature, keys, *_ = questions[0]
    span = np.array([10.0, 8.5, 5.5])
    assert choose(span, feature, keys, 0.0, choice_t)[0] == 0
    assert choose(span, feature, keys, weight, choice_t)[0] == 1


def test_the_same_answer_in_several_passages_pools_its_probability():
    keys = ["cervantes", "mozart", "cervantes", ""]
    p = open_probabilities([5.0, 5.5, 4.8, 1.0], 1.0)
    assert p.sum() == pytest.approx(1.0)
    got = pooled(p, keys)
    assert got[0] == got[2] == pytest.approx(p[0] + p[2]) and got[3] == p[3]
    # alone, "mozart" scores best; pooled at a high enough choice temperature, "cervantes"
    # wins, shown at its best-scoring candidate
    assert choose([5.0, 5.5, 4.8, 1.0], [0, 0, 0, 0], keys, 0.0, 0.01)[0] == 1
    index, probability = choose([5.0, 5.5, 4.8, 1.0], [0, 0, 0, 0], keys, 0.0, 2.0)
    assert index == 0 and probability == pytest.approx(
        pooled(open_probabilities([5.0, 5.5, 4.8, 1.0], 2.0), keys)[0])


def test_the_confidence_temperature_makes_answers_as_right_as_they_say():
    rng = np.random.default_rng(1)
    questions, right = [], []
    for _ in range(600):  # the right candidate drawn from softmax(score / 2)
        span = rng.normal(0.0, 3.0, size=4)
        truth = rng.choice(4, p=open_probabilities(span, 2.0))
        questions.append((span, np.zeros(4), ["a", "b", "c", "d"], None))
        right.append(float(truth == int(np.argmax(span))))
    chosen = [int(np.argmax(q[0])) for q in questions]
    t = fit_open_temperature(questions, chosen, right, 0.0)
    assert 1.5 < t < 2.7
    conf = [open_probabilities(q[0], t)[c] for q, c in zip(questions, chosen, strict=True)]
    raw = [open_probabilities(q[0], 1.0)[c] for q, c in zip(questions, chosen, strict=True)]
    assert reliability(conf, right)[0] < reliability(raw, right)[0]


def test_the_shipped_rule_orders_distinct_answers_by_pooled_choice():
    rule = selection.Selection(weight=2.0, temperature=3.0, form="relative",
                               choice_temperature=4.0)
    assert selection.default("hybrid") is selection.HYBRID
    assert selection.default("bm25") is selection.BM25
    top = Fused("a", 0, 0.8, {"bm25": 1, "dense": 2}, {"bm25": 12.0, "dense": 0.7})
    other = Fused("b", 1, 0.4, {"dense": 1}, {"dense": 0.75})
    assert rule.feature(top, 1, 0.8) == 1.0 and rule.feature(other, 2, 0.8) == 0.5
    assert selection.Selection(1.0, form="dense").feature(top, 1, 0.8) == 0.7
    assert selection.Selection(1.0, form="dense").feature(
        Fused("c", 0, 0.3, {"bm25": 3}, {"bm25": 4.0}), 3, 0.8) == 0.0
    assert selection.Selection(1.0, form="reciprocal_rank").feature(other, 2, 0.8) == 0.5
    scores = [9.0, 8.9, 8.8, 2.0]
    keys = ["italian", "leonardo da vinci", "leonardo da vinci", "the"]
    got = rule.answers(scores, keys)
    assert [i for i, _p in got] == [1, 0, 3]  # pooled: da Vinci (twice) first
    probs = open_probabilities(scores, 3.0)
    assert got[0][1] == pytest.approx(probs[1] + probs[2])
    assert sum(p for _i, p in got) == pytest.approx(1.0)
    # without a choice temperature the best score wins (BM25 alone)
    assert selection.Selection(2.0).answers(scores, keys)[0][0] == 0
    assert rule.with_weight(None) is rule and rule.with_weight(5).weight == 5.0
    with pytest.raises(ValueError):
        selection.Selection(1.0, form="cosine")
