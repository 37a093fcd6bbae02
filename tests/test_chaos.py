"""bench/chaos.py: the chaos run's judging of answers, and a short run on a real stack.

The short run is ``shardqa up``'s stack (3 masters, supervised workers and API, the tiny
reader) under a small load with two faults; it asserts counts, never times.
"""

from __future__ import annotations

from bench.chaos import Answers, ChaosSettings, run_chaos
from bench.soak import Outcome
from cluster.partitions import PartitionMap, passage_id
from shardqa.stack import worker_name
from tests.corpus import CORPUS, QUESTIONS


def outcome(at: float, question: str, answer=None, pid=None, error=None, **extra) -> Outcome:
    body = {"error": {"status": 503, "message": "no reply from partition(s) [3, 7] within "
                      "10s"}} if error else {"answer": answer, "passage": {"id": pid}, **extra}
    return Outcome(at, at + 0.5, question, 503 if error else 200, body, error)


def test_answers_are_judged_against_the_first_pass():
    pmap = PartitionMap.create(4, [[(0, 16383)]])
    eiffel, moon = passage_id("eiffel", 0), passage_id("moon", 0)
    answers = Answers(pmap)
    answers.add(outcome(0.0, "who?", "Gustave Eiffel", eiffel))
    answers.add(outcome(1.0, "what?", error="http 503"))  # no reference for "what?"
    answers.reference_until = 2.0
    answers.add(outcome(3.0, "who?", error="http 503"))
    answers.add(outcome(4.0, "who?", "Moon", moon, missing_partitions=[1]))
    answers.add(outcome(5.0, "what?", "Moon", moon))
    answers.add(outcome(6.0, "who?", "the Moon", moon))
    answers.add(outcome(7.0, "who?", "Gustave Eiffel", eiffel))
    row = answers.summary(2.0, 10.0)
    assert (row["requests"], row["errors"], row["partial"], row["partial_differing"],
            row["unverified"], row["wrong"], row["right"]) == (5, 1, 1, 1, 1, 1, 1)
    assert row["errors_by_kind"] == {"http 503": 1}
    assert row["errors_by_reason"] == {"no reply from partition(s) [...] within Ns": 1}
    assert answers.first_right({pmap.for_passage(eiffel).index}, 2.0) == 5.5
    others = set(range(len(pmap))) - {pmap.for_passage(eiffel).index}
    assert answers.first_right(others, 2.0) is None  # no right answer from those partitions
    assert answers.summary(0.0, 2.0)["right"] == 1


def test_a_short_chaos_run_counts_every_request_and_the_stack_mends(tmp_path, tiny_artifact):
    settings = ChaosSettings(rate=5, replicas=0, baseline_s=4, min_window_s=4, settle_s=1,
                             faults=("worker", "poison"), mend_timeout_s=45)
    result = run_chaos(settings, tiny_artifact, CORPUS, QUESTIONS, tmp_path, say=lambda m: None)
    base, killed, poisoned = result["faults"]
    for row in result["faults"]:
        assert row["requests"] > 0 and row["wrong"] == 0, row
        assert row["requests"] == sum(row[v] for v in ("right", "wrong", "partial",
                                                      "unverified", "errors")), row
    assert base["errors"] == 0 and base["right"] == base["requests"]
    assert killed["serving_again_s"] is not None and killed["recovered_s"] is not None
    assert poisoned["worker_survived"] and poisoned["dead_lettered_s"] is not None
    assert poisoned["recovered_s"] is not None
    supervised = result["stack"]["supervised"]
    assert supervised[worker_name(killed["target"])]["restarts"] == 1  # the kill, not poison
    assert sum(c["restarts"] for c in supervised.values()) == 1
    assert [g["reached"] for g in result["goals"] if g["goal"].startswith("wrong")] == [True]
