"""Issue 17: "no answer" (SQuAD 2.0 readers, or below a confidence), a confidence per answer
comparable across passages, and what ``shardqa eval`` fits and reports for both."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cluster import keys, partitions
from gears import ranking, selection
from gears.asker import MAX_N, MIN_RANK_RATIO, Asker, cache_form
from models.calibration import confidences, fit_null_threshold, fit_temperature, reliability
from models.decoding import answer_confidence, log_partition, says_no_answer, span_band
from models.export import export, read_metadata
from models.squad import normalize_answer, read_squad, score_answer
from models.tokenization import tokenize_passages, window_token_budget
from shardqa.client import Answer as ClientAnswer
from shardqa.datasets import SQUAD_DEV
from tests.conftest import run_cli
from tests.corpus import QUESTIONS
from tests.test_architectures import serve

NO_ANSWER = "the reader found no answer"


# --- the rules ----------------------------------------------------------------------------

def test_no_answer_rule_and_scoring_follow_the_official_script():
    assert says_no_answer(span_score=2.0, null_score=3.5, threshold=1.0)
    assert not says_no_answer(span_score=2.0, null_score=3.0, threshold=1.0)
    assert score_answer("", ()) == (1.0, 1.0) and score_answer(" the ", ()) == (1.0, 1.0)
    assert score_answer("Denver", ()) == (0.0, 0.0)
    # abstain on exactly the questions whose null margin is above the threshold
    diffs = [5.0, 3.0, 1.0, -2.0]
    answer_f1 = [0.0, 0.0, 1.0, 1.0]  # the first two are unanswerable
    null_f1 = [1.0, 1.0, 0.0, 0.0]
    threshold, f1 = fit_null_threshold(diffs, answer_f1, null_f1)
    assert 1.0 < threshold < 3.0 and f1 == 1.0
    assert fit_null_threshold([1.0, 2.0], [1.0, 1.0], [0.0, 0.0])[0] >= 2.0  # never abstain


def test_confidence_is_a_softmax_over_every_passage_s_spans():
    rng = np.random.default_rng(0)
    start, end = rng.normal(size=40), rng.normal(size=40)
    lo, band = span_band(start, end, 5, 40, 10)
    scores = band[np.isfinite(band)]
    assert len(scores) == sum(min(10, 35 - i) for i in range(35))
    for t in (0.5, 1.0, 3.0):
        z = log_partition(band, t)
        assert z == pytest.approx(np.log(np.exp(scores / t).sum()))
        # two passages: the answer's probability among all spans of both
        other = rng.normal(size=7) + 1
        z2 = log_partition(other, t)
        p = answer_confidence(float(scores.max()), t, [z, z2])
        assert p == pytest.approx(np.exp(scores.max() / t) / (np.exp(scores / t).sum()
                                                              + np.exp(other / t).sum()))
    assert answer_confidence(1.0, 1.0, [0.0, None]) is None


def test_temperature_fit_lowers_calibration_error():
    rng = np.random.default_rng(1)
    # overconfident candidates: a sharp best span that is right only half the time
    candidates = [sorted(rng.normal(size=20) * 6, reverse=True) for _ in range(300)]
    correct = (rng.random(300) < 0.5).astype(float)
    before, _ = reliability(confidences(candidates, 1.0), correct)
    t = fit_temperature(candidates, correct)
    after, rows = reliability(confidences(candidates, t), correct)
    assert t > 1.0 and after < before
    assert sum(r["count"] for r in rows) == 300


# --- shardqa eval on a SQuAD 2.0 file -----------------------------------------------------

@pytest.fixture(scope="module")
def squad2_file(tmp_path_factory):
    """The first dev paragraphs as SQuAD 2.0: every third question made unanswerable."""
    data = json.loads(SQUAD_DEV.read_text(encoding="utf-8"))
    article = data["data"][0]
    article["paragraphs"] = article["paragraphs"][:3]
    n = 0
    for paragraph in article["paragraphs"]:
        for qa in paragraph["qas"]:
            if n % 3 == 0:
                qa["is_impossible"] = True
                qa["plausible_answers"], qa["answers"] = qa["answers"], []
            n += 1
    path = tmp_path_factory.mktemp("squad2") / "dev-v2.json"
    path.write_text(json.dumps({"version": "v2.0", "data": [article]}), encoding="utf-8")
    return path


def test_eval_reads_squad2_fits_threshold_and_temperature(squad2_file, tiny_artifact,
                                                          tmp_path):
    artifact = shutil.copytree(tiny_artifact, tmp_path / "tiny2")
    examples = read_squad(squad2_file)
    unanswerable = {e.id for e in examples if not e.has_answer}
    assert 0 < len(unanswerable) < len(examples)
    plot, out = tmp_path / "reliability.png", tmp_path / "report.json"
    proc = run_cli("eval", str(squad2_file), "--model", str(artifact), "--fit-null-threshold",
                   "--fit-temperature", "--reliability-plot", str(plot), "--json", str(out),
                   "--save-fit", "--quiet")
    assert proc.returncode == 0, proc.stderr
    for row in ("HasAns EM / F1", "NoAns EM / F1", "calibration error (ECE)",
                "fitted null_threshold", "fitted temperature", "reliability plot written"):
        assert row in proc.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.read_text())
    kinds = report["by_kind"]
    assert kinds["NoAns"]["count"] == len(unanswerable)
    assert kinds["HasAns"]["count"] == len(examples) - len(unanswerable)
    # NoAns EM is the share of unanswerable questions the reader abstained on
    abstained = sum(1 for qid in unanswerable if report["predictions"][qid] == "")
    assert kinds["NoAns"]["exact_match"] == pytest.approx(100 * abstained / len(unanswerable))
    total = (kinds["HasAns"]["f1"] * kinds["HasAns"]["count"]
             + kinds["NoAns"]["f1"] * kinds["NoAns"]["count"]) / len(examples)
    assert report["f1"] == pytest.approx(total)
    # the fit chose a threshold at least as good as never abstaining, and saved it
    plain = run_cli("eval", str(squad2_file), "--model", str(tiny_artifact), "--json",
                    str(tmp_path / "plain.json"), "--quiet")
    assert plain.returncode == 0, plain.stderr
    assert report["f1"] >= json.loads((tmp_path / "plain.json").read_text())["f1"]
    meta = read_metadata(artifact)
    assert meta["null_threshold"] == pytest.approx(report["fitted"]["null_threshold"])
    assert meta["temperature"] == pytest.approx(report["fitted"]["temperature"])
    # the saved threshold is what the artifact now reads with: the same predictions
    again = run_cli("eval", str(squad2_file), "--model", str(artifact), "--json",
                    str(tmp_path / "again.json"), "--quiet")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again.json").read_text())["predictions"] == \
        report["predictions"]


def test_eval_min_confidence_abstains_and_fit_options_are_reader_only(squad2_file,
                                                                      tiny_artifact,
                                                                      tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("eval", str(squad2_file), "--model", str(tiny_artifact),
                   "--min-confidence", "1", "--json", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(out.read_text())["predictions"].values()) == {""}
    bad = run_cli("eval", str(squad2_file), "--mode", "open", "--fit-null-threshold")
    assert bad.returncode == 2 and "--mode reader" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


# --- through the pipeline -----------------------------------------------------------------

@pytest.fixture(scope="module")
def readers(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint as a SQuAD 2.0 reader whose null always wins, and as a SQuAD 1.1
    reader that abstains below certainty."""
    root = tmp_path_factory.mktemp("null-readers")
    return {
        "null": export(tiny_checkpoint, "tiny-squad2", root / "null", null_threshold=-1e6),
        "sure": export(tiny_checkpoint, "tiny-sure", root / "sure", min_confidence=1.0),
    }


def test_pipeline_says_no_answer_with_a_reason_and_caches_it(shared_pipeline, readers,
                                                             tiny_artifact, redis_cluster):
    client = shared_pipeline
    before = Asker(client, timeout_s=30).ask(QUESTIONS[2])
    assert before.answer is not None and Asker(client).ask(QUESTIONS[2]).cached
    try:
        for which in ("null", "sure"):
            serve(client, readers[which])
            asker = Asker(client, timeout_s=30)
            question = f"{QUESTIONS[0]} ({which})"
            answer = asker.ask(question)
            assert answer.answer is None and answer.passages_read, which
            assert answer.reason.startswith(NO_ANSWER)
            body = answer.public()
            assert body["answer"] is None and body["reason"] == answer.reason
            cached = asker.ask(question)
            assert cached.cached and cached.answer is None and cached.reason == answer.reason
            # a new reader makes the answers cached under the previous one stale
            stale = asker.ask(QUESTIONS[2])
            assert not stale.cached and stale.answer is None and stale.reason
            typed = ClientAnswer.from_body(body)  # the Python API
            assert typed.reason == answer.reason and typed.answer is None
            assert typed.to_dict() == body
        proc = run_cli("ask", QUESTIONS[1], "--dir", redis_cluster.target.directory)
        assert proc.returncode == 0, proc.stderr
        assert "no answer:" in proc.stdout and NO_ANSWER in proc.stdout
    finally:
        serve(client, tiny_artifact)


def test_pipeline_confidence_is_the_softmax_over_the_passages_read(shared_pipeline):
    """BM25 alone: the answer is the best span score + 4 x relative BM25 score; its
    confidence is its text's probability in a softmax over every candidate span of every
    passage read (the reader's best and next distinct spans, retrieval weight included)."""
    from models import store

    client = shared_pipeline
    asker = Asker(client, timeout_s=30)
    rule = selection.BM25
    pmap = partitions.load(client)
    loaded = store.load(client, client.get_primaries()[0].name)
    reader = loaded.reader()
    for question in QUESTIONS:
        answer = asker.ask(question, use_cache=False)
        assert answer.answer is not None and 0 < answer.confidence <= 1
        assert answer.public()["confidence"] == answer.confidence
        typed = ClientAnswer.from_body(answer.public())
        assert typed.confidence == answer.confidence and typed.reason is None
        assert typed.to_dict() == answer.public()
        ranked = ranking.above_floor(ranking.rank(client, pmap, question, 5), MIN_RANK_RATIO)
        texts = [client.hget(keys.passage(pmap.for_passage(r.pid).tag, r.pid), "text").decode()
                 for r in ranked]
        tokens = tokenize_passages(loaded.tokenizer, texts, window_token_budget(
            int(loaded.meta["max_seq_len"]), int(loaded.meta["max_question_tokens"])), 128)
        spans = reader.read_many([(question, list(zip(texts, tokens, strict=True)))],
                                 top=MAX_N)[0]
        top = max(r.score for r in ranked)
        candidates = [(s.score + rule.weight * r.score / top, s.text)
                      for r, best in zip(ranked, spans, strict=True) if best
                      for s in (best, *best.more)]
        scores = np.asarray([c[0] for c in candidates])
        e = np.exp((scores - scores.max()) / rule.temperature)
        key = normalize_answer(answer.answer)  # "" (e.g. "."): an answer of its own
        expected = (sum(x for x, c in zip(e, candidates, strict=True)
                        if normalize_answer(c[1]) == key) if key else e.max()) / e.sum()
        assert answer.score == pytest.approx(scores.max(), rel=1e-4)
        assert answer.confidence == pytest.approx(expected, rel=1e-4)


# --- a minimum on the confidence shown (issue 17.3) ---------------------------------------

BELOW = "below the minimum confidence"
BAD_MIN = "min_confidence must be a number from 0 to 1"


#: a question asked with a minimum before it is cached
FRESH = f"{QUESTIONS[0]} (minimum)"


@pytest.fixture(scope="module")
def shown(shared_pipeline):
    """Every test question's answer with no minimum, and a minimum above all their
    confidences and FRESH's (the answers are cached now, before any minimum is set; FRESH's
    entry is deleted again)."""
    asker = Asker(shared_pipeline, timeout_s=30)
    plain = {q: asker.ask(q, n=MAX_N) for q in QUESTIONS}
    fresh = asker.ask(FRESH)
    shared_pipeline.delete(keys.answer_cache(fresh.generation, fresh.k, cache_form(FRESH)))
    assert all(a.answer is not None and 0 < a.confidence for a in [*plain.values(), fresh])
    top = max(a.confidence for a in [*plain.values(), fresh])
    assert top < 1
    return plain, round((top + 1) / 2, 6)


def test_api_min_confidence_abstains_on_the_shown_confidence(shown, redis_cluster, tmp_path,
                                                             monkeypatch):
    """``shardqa serve`` with SHARDQA_MIN_CONFIDENCE above every confidence answers null with
    the reason, cached answers included; a request's min_confidence replaces it (0: the
    answer unchanged); bad values are a 400 saying so."""
    import urllib.parse

    from tests.test_api import http, start_serve

    plain, above = shown
    monkeypatch.setenv("SHARDQA_MIN_CONFIDENCE", str(above))
    proc, url = start_serve(redis_cluster.target.directory, tmp_path, "--timeout", "30")
    try:
        def get(**query):
            return http("GET", f"{url}/qa?{urllib.parse.urlencode(query)}")

        def post(**body):
            return http("POST", url + "/qa", json.dumps(body).encode(),
                        {"Content-Type": "application/json"})

        for question, answer in plain.items():
            status, body, _ = get(q=question, n=3)
            assert status == 200, body
            assert body["cached"] is True  # cached before the minimum: it applies all the same
            assert body["answer"] is None and body["passage"] is None and body["score"] is None
            assert BELOW in body["reason"] and f"({answer.confidence:.2f})" in body["reason"]
            assert "confidence" not in body and body["answers"] == []
            # 0 changes nothing: the request's minimum replaces the server's
            for status, same, _ in (get(q=question, n=3, min_confidence=0),
                                    post(question=question, n=3, min_confidence=0)):
                assert status == 200 and same["cached"] is True
                assert same == {**answer.public(3), "cached": True,
                                "timings_ms": same["timings_ms"]}
            # at the answer's own confidence it stays; its further answers below it go
            status, kept, _ = get(q=question, n=MAX_N, min_confidence=answer.confidence)
            assert status == 200 and kept["answer"] == answer.answer
            assert [a["answer"] for a in kept["answers"]] == [
                a.answer for a in answer.answers if a.confidence >= answer.confidence]
        # a question not cached yet: abstains, and the cache keeps the answer itself
        status, body, _ = post(question=FRESH)
        assert status == 200 and body["cached"] is False and body["answer"] is None
        assert BELOW in body["reason"] and body["passages_read"]
        status, body, _ = post(question=FRESH, min_confidence=0.0)
        assert status == 200 and body["cached"] is True and body["answer"]
        assert 0 < body["confidence"] < above
        for query in ("-0.1", "1.5", "abc", "nan", "inf", ""):
            status, body, _ = get(q=QUESTIONS[0], min_confidence=query)
            assert status == 400, query
            assert body == {"error": {"status": 400, "message": BAD_MIN}}
        for value in ("0.5", None, True, -1, 2):
            status, body, _ = post(question=QUESTIONS[0], min_confidence=value)
            assert status == 400, value
            assert body == {"error": {"status": 400, "message": BAD_MIN}}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ask_and_python_api_min_confidence(shown, redis_cluster):
    """``shardqa ask --min-confidence`` and the Python API abstain alike; bad values are
    one line and exit code 2 (a QuestionError in Python)."""
    import shardqa
    from gears.asker import QuestionError

    plain, above = shown
    question = QUESTIONS[1]
    directory = redis_cluster.target.directory
    out = run_cli("ask", question, "--min-confidence", str(above), "--json", "--dir", directory)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["answer"] is None and BELOW in body["reason"]
    out = run_cli("ask", question, "--dir", directory, env={"SHARDQA_MIN_CONFIDENCE": str(above)})
    assert out.returncode == 0 and "no answer:" in out.stdout and BELOW in out.stdout
    out = run_cli("ask", question, "--min-confidence", "0", "--dir", directory)
    assert out.returncode == 0 and plain[question].answer in out.stdout
    for bad in ("-1", "1.01", "x"):
        out = run_cli("ask", question, "--min-confidence", bad, "--dir", directory)
        assert out.returncode == 2 and out.stderr.strip() == f"error: {BAD_MIN}", out.stderr
    with shardqa.connect(dir=directory, timeout=30, min_confidence=above) as qa:
        answer = qa.ask(question)
        assert answer.answer is None and answer.passage is None and BELOW in answer.reason
        same = qa.ask(question, min_confidence=0)
        assert same.answer == plain[question].answer
        assert same.confidence == plain[question].confidence
        with pytest.raises(QuestionError, match=BAD_MIN):
            qa.ask(question, min_confidence=-0.5)
    with pytest.raises(QuestionError, match=BAD_MIN):
        shardqa.connect(dir=directory, min_confidence=2)


def test_eval_open_min_confidence_reports_coverage(shown, squad2_file, redis_cluster,
                                                   tmp_path):
    """``shardqa eval --mode open --min-confidence X`` abstains on the confidence shown and
    reports how many answered and their F1 (last in this module: it ingests the file)."""
    directory = redis_cluster.target.directory
    plain = run_cli("eval", str(squad2_file), "--mode", "open", "--json",
                    str(tmp_path / "plain.json"), "--quiet", "--dir", directory)
    assert plain.returncode == 0, plain.stderr
    report = json.loads((tmp_path / "plain.json").read_text())
    assert report["coverage"] is None
    examples = read_squad(squad2_file)
    asker = Asker(redis_cluster.client(), timeout_s=30)
    confidence = {e.id: asker.ask(e.question).confidence or 0.0 for e in examples}
    least = float(np.median(list(confidence.values())))
    out = tmp_path / "min.json"
    proc = run_cli("eval", str(squad2_file), "--mode", "open", "--no-ingest",
                   "--min-confidence", str(least), "--json", str(out), "--quiet",
                   "--dir", directory)
    assert proc.returncode == 0, proc.stderr
    assert "answered / abstained" in proc.stdout and "answered EM / F1" in proc.stdout
    got = json.loads(out.read_text())
    answered = [e for e in examples if confidence[e.id] >= least]
    assert 0 < len(answered) < len(examples)
    cover = got["coverage"]
    assert cover["min_confidence"] == least and got["asking"]["min_confidence"] == least
    assert cover["answered"] == len(answered)
    assert cover["abstained"] == len(examples) - len(answered)
    for e in examples:  # the answered keep their answer; the others say nothing
        expected = report["predictions"][e.id] if confidence[e.id] >= least else ""
        assert got["predictions"][e.id] == expected
    f1 = 100 * sum(score_answer(got["predictions"][e.id], e.answers)[1]
                   for e in answered) / len(answered)
    assert cover["f1"] == pytest.approx(f1)
