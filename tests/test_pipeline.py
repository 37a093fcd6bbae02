"""Issue 5: the question path end to end on the real 3-master cluster with real workers."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster import keys, partitions
from gears import ranking
from gears.asker import (
    MAX_N,
    MIN_RANK_RATIO,
    RETRIEVAL_WEIGHT,
    Asker,
    QuestionError,
    answer_score,
    cache_form,
)
from models.squad import normalize_answer
from tests.corpus import QUESTIONS


def direct_spans(client, question, k=5, top=1):
    """The reader runtime called directly on the same top-k passages: (ranked, spans)."""
    from models import store
    from models.tokenization import tokenize_passages, window_token_budget

    pmap = partitions.load(client)
    ranked = ranking.above_floor(ranking.rank(client, pmap, question, k), MIN_RANK_RATIO)
    loaded = store.load(client, client.get_primaries()[0].name)
    reader = loaded.reader()
    meta = loaded.meta
    texts = [client.hget(keys.passage(pmap.for_passage(r.pid).tag, r.pid), "text").decode()
             for r in ranked]
    tokens = tokenize_passages(loaded.tokenizer, texts, window_token_budget(
        int(meta["max_seq_len"]), int(meta["max_question_tokens"])), 128)
    return ranked, reader.read_many([(question, list(zip(texts, tokens, strict=True)))],
                                    top=top)[0]


def direct_answer(client, tiny_artifact, question, k=5):
    """The reference best answer."""
    ranked, spans = direct_spans(client, question, k)
    best = None
    top = max(r.score for r in ranked)
    for r, span in zip(ranked, spans, strict=True):
        if span is None:
            continue
        score = answer_score(span.score, r.score, top, RETRIEVAL_WEIGHT)
        key = (-score, r.pid, span.start, span.end)
        if best is None or key < best[0]:
            best = (key, r.pid, span)
    return ranked, best


def test_answers_equal_direct_reader_and_cache(shared_pipeline, tiny_artifact):
    client = shared_pipeline
    asker = Asker(client, timeout_s=20)
    for question in QUESTIONS:
        answer = asker.ask(question)
        ranked, best = direct_answer(client, tiny_artifact, question)
        assert answer.passages_read == [r.pid for r in ranked]
        assert best is not None and answer.answer is not None
        _, pid, span = best
        assert (answer.passage_id, answer.start, answer.end) == (pid, span.start, span.end)
        assert answer.answer == span.text == answer.passage_text[answer.start:answer.end]
        assert answer.score == pytest.approx(
            answer_score(span.score, ranked[[r.pid for r in ranked].index(pid)].score,
                         ranked[0].score, RETRIEVAL_WEIGHT), abs=1e-3)
        assert not answer.cached
        # no encoder pushed: BM25 alone, its rank of the answer's passage
        assert answer.retrieval == {"mode": "bm25", "dense": None,
                                    "bm25": [r.pid for r in ranked].index(pid) + 1}
        again = asker.ask(question)
        assert again.cached and again.answer == answer.answer
        assert again.retrieval == answer.retrieval
        # the cache key is case- and whitespace-insensitive
        assert asker.ask("  " + question.upper() + " ").cached


def test_without_an_encoder_status_says_bm25_and_why(shared_pipeline):
    from gears import health

    asker = Asker(shared_pipeline, timeout_s=20)
    assert asker.ask(QUESTIONS[0], use_cache=False).retrieval["mode"] == "bm25"
    assert asker.encoder.why == "no passage encoder pushed"
    assert health.status(shared_pipeline)["retrieval"] == {
        "mode": "bm25", "vector_sets": True, "encoder": None}


def test_keymiss_fills_answer_key_on_owning_master(shared_pipeline):
    client = shared_pipeline
    question = "What is the capital of Japan?"
    key = keys.ask_key(question)
    assert client.get(key) is None  # publishes keymiss on the owning master
    deadline = time.monotonic() + 30
    raw = None
    while raw is None and time.monotonic() < deadline:
        time.sleep(0.05)
        raw = client.get(key)
    assert raw is not None, "the worker did not fill the answer key"
    body = json.loads(raw)
    expected = Asker(client, timeout_s=20).ask(question, n=MAX_N)
    assert body["answer"] == expected.answer and body["passage_id"] == expected.passage_id
    # redis-cli users get the further answers too (the key has no room for an n)
    assert [a["answer"] for a in body["answers"]] == [a.answer for a in expected.answers]
    assert len(body["answers"]) > 1
    owner = client.get_node_from_key(key)
    assert client.get_redis_connection(owner).get(key) == raw
    # the redis-cli function says where the answer is, or returns it
    assert client.fcall("ask", 1, key) == raw
    pending = client.fcall("ask", 1, keys.ask_key("How far away is the Moon from Earth?"))
    assert pending.startswith(b"pending")


def test_bad_questions_are_rejected(shared_pipeline):
    asker = Asker(shared_pipeline)
    for bad in ["", "   ", "\x00\x01", "x" * 1001, None, 42]:
        with pytest.raises(QuestionError):
            asker.ask(bad)
    for k in [0, 51, "3", True, 2.5]:
        with pytest.raises(QuestionError):
            asker.ask("valid question", k)
    for n in [0, 11, "3", True, 2.5, None]:
        with pytest.raises(QuestionError, match="n must be an integer from 1 to 10"):
            asker.ask("valid question", 5, n)
    # hash-tag characters and odd text are just text
    for odd, asked in [("what is {p0.0}?", "what is {p0.0}?"), ("}{", "}{"),
                       ("a" * 900, "a" * 900), ("naïve café ☕?", "naïve café ☕?"),
                       ("  tabs\tand\nnew lines  ", "tabs and new lines")]:
        answer = asker.ask(odd)
        assert answer.question == asked
        assert answer.answer is None or answer.answer in (answer.passage_text or "")


def test_concurrent_asks_batch_on_the_shards(shared_pipeline):
    client = shared_pipeline
    asker = Asker(client, timeout_s=30)
    questions = [f"{q} ({i})" for i in range(20) for q in QUESTIONS][:100]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda q: asker.ask(q, use_cache=False), questions))
    assert all(a.answer is not None for a in answers)
    assert max(max(a.batch_sizes) for a in answers) > 1


def direct_answers(client, question, k=5):
    """The reference answers: every passage's best and next distinct spans from the reader
    itself, scored as answers, best first, one per SQuAD-normalised text."""
    ranked, spans = direct_spans(client, question, k, top=MAX_N)
    top = ranked[0].score
    found = sorted(((answer_score(s.score, r.score, top, RETRIEVAL_WEIGHT), r.pid, s.start,
                     s.end, s.text)
                    for r, best in zip(ranked, spans, strict=True) if best
                    for s in (best, *best.more)), key=lambda c: (-c[0], *c[1:4]))
    out, seen = [], set()
    for score, pid, start, end, text in found:
        key = normalize_answer(text)
        if (key and key not in seen) or not out:
            seen.add(key)
            out.append((pid, start, end, text, score))
    return out[:MAX_N]


def test_several_distinct_answers_equal_the_reader_s_and_share_one_cache_entry(
        shared_pipeline):
    client = shared_pipeline
    asker = Asker(client, timeout_s=20)
    for question in QUESTIONS:
        answer = asker.ask(question, n=3, use_cache=False)
        body = answer.public(3)
        answers = body["answers"]
        assert len(answers) == 3, answers
        best = answers[0]
        assert (best["answer"], best["start"], best["passage"]) == (
            body["answer"], body["start"], body["passage"])
        assert len({normalize_answer(a["answer"]) for a in answers}) == 3  # distinct
        for a in answers:
            assert a["passage"]["text"][a["start"]:a["end"]] == a["answer"]
            assert 0 < a["confidence"] <= 1
            assert a["retrieval"]["mode"] == "bm25" and a["retrieval"]["bm25"] >= 1
        assert [a["score"] for a in answers] == sorted((a["score"] for a in answers),
                                                       reverse=True)
        expected = direct_answers(client, question)
        assert [(a.passage_id, a.start, a.end, a.answer) for a in answer.answers] == [
            e[:4] for e in expected]
        assert [a.score for a in answer.answers] == pytest.approx([e[4] for e in expected],
                                                                  abs=1e-3)
        # n is how many a caller is shown: one cache entry serves every n
        assert "answers" not in answer.public()
        every = answer.public(MAX_N)["answers"]
        assert every[:3] == answers and len(every) == len(expected)
        for n in (1, 2, MAX_N):
            again = asker.ask(question, n=n)
            assert again.cached and again.public(n).get("answers", []) == (
                every[:n] if n > 1 else [])
            assert again.public(n)["answer"] == body["answer"]


def test_an_answer_cached_before_several_answers_serves_n_1_and_is_a_miss_for_more(
        shared_pipeline):
    client = shared_pipeline
    asker = Asker(client, timeout_s=20)
    question = QUESTIONS[3]
    fresh = asker.ask(question, use_cache=False)
    key = keys.answer_cache(asker.generation(fresh=True), 5, cache_form(question))
    head, more = client.get(key).split(b"\n")  # the answer, then its further answers
    assert set(json.loads(more)) == {"answers", "passages"} and b"answers" not in head
    client.set(key, head, ex=60)  # what an older shardqa cached: the answer's JSON alone
    hit = asker.ask(question)
    assert hit.cached and hit.answer == fresh.answer and hit.answers is None
    assert "answers" not in hit.public()
    assert asker.cached(question, 5, 3) is None  # the API's cache-only look
    several = asker.ask(question, n=3)
    assert not several.cached and len(several.public(3)["answers"]) == 3
    assert json.loads(client.get(key).split(b"\n")[1])["answers"]  # the new kind now
    assert asker.ask(question, n=3).cached
    client.set(key, head + b"\n[1, 2]", ex=60)  # further answers that do not parse
    assert asker.ask(question).cached and not asker.ask(question, n=2).cached
