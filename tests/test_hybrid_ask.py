"""Issue 13: asking with hybrid retrieval on the real Redis 8 cluster with real workers: the
question embedded in the asker by the pushed (tiny) encoder, BM25 and VSIM fused, the answer
saying which retriever found its passage; BM25 alone without an encoder or when asked."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gears import analyzer, health, ranking, selection
from gears.asker import DEFAULT_K, Asker, normalize
from loaders.documents import Document
from loaders.passages import split_passages
from loaders.writer import ingest, wait_indexed
from models import store
from models.encoder import passage_input
from models.squad import normalize_answer
from shardqa.ask import retrieval_line
from tests.conftest import run_cli
from tests.corpus import CORPUS, QUESTIONS

QUESTION = "Who founded the observatory?"
#: passages sharing no word with QUESTION: BM25 cannot find them, only their embeddings can
WORDLESS = [Document(f"wordless-{i}", text, title=title) for i, (title, text) in enumerate([
    ("Amber glaciers", "Quiet amber glaciers drift slowly under pale winter skies."),
    ("Copper kettles", "Copper kettles whistle loudly inside crowded market kitchens."),
    ("Velvet moths", "Velvet moths circle lanterns during warm summer evenings."),
    ("Granite bridges", "Granite bridges span narrow rivers between mountain villages."),
    ("Silver herons", "Silver herons wade patiently through shallow marsh water."),
])]


@pytest.fixture(scope="module")
def hybrid_pipeline(redis_cluster, tiny_artifact, tiny_encoder_artifact, tmp_path_factory):
    """Tiny reader and tiny encoder pushed, the test corpus and WORDLESS ingested."""
    from tests.conftest import WorkerPool, wait_reembedded

    redis_cluster.flush()
    client = redis_cluster.client()
    store.push(client, tiny_artifact)
    store.push(client, tiny_encoder_artifact, variant="int8")
    pool = WorkerPool(redis_cluster, tmp_path_factory.mktemp("hybrid-workers"))
    try:
        pool.start_all()
        pool.wait_ready()
        ingest(client, [*CORPUS, *WORDLESS], progress=False)
        wait_indexed(client, timeout=120, progress=False)
        wait_reembedded(client)  # every partition has vectors (empty ones too): hybrid
        yield redis_cluster
    finally:
        pool.stop_all()


def test_answers_are_hybrid_with_a_dense_rank_and_cached_alike(hybrid_pipeline):
    api = hybrid_pipeline.client_as("api")
    asker = Asker(api, timeout_s=20)
    for question in QUESTIONS:
        answer = asker.ask(question)
        assert answer.passage_id is not None and not answer.cached
        found = answer.retrieval
        assert found["mode"] == "hybrid"
        # the corpus is smaller than the candidate depth: VSIM returns every passage
        assert isinstance(found["dense"], int) and found["dense"] >= 1
        assert found["bm25"] is None or found["bm25"] >= 1
        again = asker.ask(question)
        assert again.cached and again.retrieval == found
        assert again.public()["retrieval"] == found
    report = health.status(api)
    assert report["retrieval"]["mode"] == "hybrid" and report["retrieval"]["vector_sets"]
    assert report["retrieval"]["encoder"].startswith("tiny-enc ")
    # the CLI shows it: the answer from the cache, with the same ranks
    out = run_cli("ask", QUESTIONS[0], "--dir", hybrid_pipeline.target.directory)
    assert out.returncode == 0, out.stderr
    ranks = asker.ask(QUESTIONS[0]).retrieval
    assert retrieval_line(ranks).startswith("hybrid retrieval: BM25 ")
    assert retrieval_line(ranks) in " ".join(out.stdout.split())
    status = run_cli("status", "--dir", hybrid_pipeline.target.directory)
    assert "retrieval: hybrid (BM25 + dense, encoder tiny-enc" in " ".join(status.stdout.split())


def test_dense_finds_the_nearest_passage_that_shares_no_word(hybrid_pipeline):
    client = hybrid_pipeline.client()
    wordless = {p.pid: p for d in WORDLESS for p in split_passages(d)}
    terms = set(analyzer.query_terms(QUESTION))
    for p in wordless.values():
        assert not terms & set(analyzer.query_terms(f"{p.title} {p.text}"))
    encoder = store.load(client, client.get_primaries()[0].name, kind="encoder").encoder()
    q = encoder.embed([QUESTION])[0]
    vectors = encoder.embed([passage_input(p.title, p.text) for p in wordless.values()])
    nearest = list(wordless)[int(np.argmax(vectors @ q))]

    asker = Asker(hybrid_pipeline.client_as("api"), timeout_s=20, min_rank_ratio=0)
    found = asker.retrieve(QUESTION, 50)
    assert found.mode == "hybrid"
    ranks = {f.pid: f.ranks for f in found.passages}
    assert "bm25" not in ranks[nearest] and ranks[nearest]["dense"] >= 1
    # dense orders the wordless passages as their embeddings do
    dense_order = [pid for pid in sorted(ranks, key=lambda p: ranks[p].get("dense", 10**6))
                   if pid in wordless]
    cosines = sorted(vectors @ q, reverse=True)
    # Q8 quantization in the vector set may swap a near tie of the tiny random encoder
    assert dense_order[0] == nearest or (cosines[0] - cosines[1] < 0.02
                                         and nearest in dense_order[:2])
    plain = Asker(hybrid_pipeline.client_as("api"), retrieval_mode="bm25").retrieve(QUESTION, 50)
    assert plain.mode == "bm25" and nearest not in {f.pid for f in plain.passages}
    assert all(set(f.ranks) == {"bm25"} for f in plain.passages)
    answer = asker.ask(QUESTION, k=50, use_cache=False)
    assert nearest in answer.passages_read


def test_bm25_mode_never_embeds_and_a_cache_hit_embeds_nothing(hybrid_pipeline):
    api = hybrid_pipeline.client_as("api")
    asker = Asker(api, timeout_s=20, retrieval_mode="bm25")
    answer = asker.ask(QUESTIONS[0], use_cache=False)
    assert answer.retrieval["mode"] == "bm25" and answer.retrieval["dense"] is None
    assert asker.encoder.loaded == []  # never loaded
    Asker(api, timeout_s=20).ask(QUESTIONS[1])  # cached by a hybrid asker
    fresh = Asker(api, timeout_s=20)
    hit = fresh.ask(QUESTIONS[1])
    assert hit.cached and hit.retrieval["mode"] == "hybrid"
    assert fresh.encoder.loaded == []  # the hit neither loaded the encoder nor embedded
    with pytest.raises(ValueError):
        Asker(api, retrieval_mode="colbert")



def _pooled_by_hand(asker: Asker, question: str, rule) -> tuple[dict[str, float], dict]:
    """The workers' candidate spans for ``question`` read again, and each answer text's
    probability under ``rule`` computed here: (text -> confidence, text -> choice value: its
    pooled probability at the choice temperature, or its best score without one)."""
    q = normalize(question)
    found = asker.retrieve(q, DEFAULT_K)
    ratio, _ = asker.settings(found.mode)
    ranked = ranking.above_floor(found.passages, ratio)
    replies, _ = asker._read(q, ranked)
    top = max(r.score for r in ranked)
    feature = {r.pid: rule.feature(r, i, top) for i, r in enumerate(ranked, start=1)}
    scores, keys = [], []
    for reply in replies:
        for span in reply.spans:
            for _start, _end, text, raw in span.all_spans():
                scores.append(raw + rule.weight * feature[span.pid])
                keys.append(normalize_answer(text))
    scores = np.asarray(scores)

    def by_text(t: float) -> dict[str, float]:
        e = np.exp((scores - scores.max()) / t)
        pooled = {k: float(e[[i for i, x in enumerate(keys) if x == k]].sum() / e.sum())
                  for k in set(keys)}
        pooled[""] = float(e.max() / e.sum())  # an empty text pools with nothing (the best)
        return pooled

    if rule.choice_temperature is None:
        best = {k: float(max(x for x, y in zip(scores, keys, strict=True) if y == k))
                for k in set(keys)}
        return by_text(rule.temperature), best
    return by_text(rule.temperature), by_text(rule.choice_temperature)


def test_the_answer_s_confidence_is_the_fitted_rule_s(hybrid_pipeline, monkeypatch):
    """The choice and the confidence read gears.selection's fitted rule: the answer's
    confidence is its text's probability pooled over the workers' candidate spans, at the
    fitted weight and temperature; another temperature there changes it accordingly."""
    api = hybrid_pipeline.client_as("api")
    asker = Asker(api, timeout_s=20)
    assert asker.settings("hybrid")[1] == selection.HYBRID
    assert selection.HYBRID.temperature != 1.0  # fitted (bench/open_select.py)
    for question in QUESTIONS[:3]:
        answer = asker.ask(question, use_cache=False)
        confidence, choice = _pooled_by_hand(asker, question, selection.HYBRID)
        key = normalize_answer(answer.answer)
        assert answer.confidence == pytest.approx(confidence[key], rel=1e-3)
        assert choice[key] == pytest.approx(max(choice.values()), rel=1e-6)
        assert answer.public()["confidence"] == answer.confidence
    hotter = replace(selection.HYBRID, temperature=3 * selection.HYBRID.temperature)
    monkeypatch.setattr(selection, "HYBRID", hotter)
    again = asker.ask(QUESTIONS[0], use_cache=False)
    confidence, _ = _pooled_by_hand(asker, QUESTIONS[0], hotter)
    assert again.confidence == pytest.approx(confidence[normalize_answer(again.answer)],
                                             rel=1e-3)
    first = asker.ask(QUESTIONS[0])  # from the cache, as computed last
    assert first.cached and first.confidence == again.confidence
