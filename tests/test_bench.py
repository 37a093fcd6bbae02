"""bench/: the pieces of ``shardqa bench`` that decide what a figure means.

The baselines and the capped rank run against the real pipeline (3 masters, real workers,
the tiny reader); nothing here asserts a time.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest

from bench import comparison, corpus, haystack_peer, report
from bench.baselines import NaiveBaseline, pattern_answer
from bench.one_process import OneProcessQA
from bench.options import SKIP_RATIO, candidates, option_speed
from bench.reader_forward import model_flops
from bench.run import goals, vs_naive
from bench.timing import LeanHttpClient, run_concurrent
from cluster import partitions
from cluster.partitions import passage_id
from gears import analyzer, ranking
from gears.asker import Asker
from loaders.documents import Document
from loaders.passages import split_passages
from models.evaluation import percentiles
from models.squad import SquadExample
from models.tokenization import PassageTokens
from tests.corpus import CORPUS, QUESTIONS

MINILM = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}


def test_model_flops_match_the_measured_minilm_figures():
    # FACTS.md: MiniLM-L6 costs 2.87 GFLOP at 128 tokens, 9.51 at 384
    assert model_flops(MINILM, 1, 128) / 1e9 == pytest.approx(2.87, rel=0.02)
    assert model_flops(MINILM, 1, 384) / 1e9 == pytest.approx(9.51, rel=0.02)
    assert model_flops(MINILM, 8, 128) == pytest.approx(8 * model_flops(MINILM, 1, 128))


def test_percentiles():
    stats = percentiles([float(x) for x in range(1, 101)])
    assert stats["n"] == 100
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p95"] == pytest.approx(95.05)
    assert stats["min"] == 1.0
    assert percentiles([]) == {"n": 0}


def test_question_pool_never_repeats_and_says_when_dev_runs_out():
    examples = [SquadExample(str(i), "t", 0, "c", f"q{i}", ("a",), (0,)) for i in range(10)]
    pool = corpus.QuestionPool(examples)
    first, second = pool.take(4), pool.take(4)
    assert {e.id for e in first}.isdisjoint({e.id for e in second})
    with pytest.raises(corpus.CorpusError, match="more questions"):
        pool.take(3)


def test_lean_http_client_reads_whole_responses_on_one_connection():
    """The cached-answer figure's client: framed by Content-Length, one kept-alive socket."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    connections = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - the http.server API
            connections.append(self.client_address)
            body = json.dumps({"path": self.path, "pad": "x" * 100_000}).encode()
            self.send_response(200 if self.path != "/missing" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = LeanHttpClient(f"http://127.0.0.1:{server.server_address[1]}")
        for path in ("/qa?q=a", "/qa?q=b", "/missing"):
            ms, status, body = client.get(client.request_bytes(path))
            assert json.loads(body)["path"] == path and ms > 0
            assert status == (404 if path == "/missing" else 200)
        client.close()
        assert len(set(connections)) == 1  # kept alive
    finally:
        server.shutdown()


def test_dev_questions_are_a_fixed_shuffle(tmp_path):
    data = {"data": [{"title": "T", "paragraphs": [
        {"context": "Alpha beta.", "qas": [{"id": f"q{i}", "question": f"Q {i}?",
                                            "answers": [{"text": "Alpha", "answer_start": 0}]}
                                           for i in range(20)]}]}]}
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(data))
    once, again = corpus.dev_questions(path), corpus.dev_questions(path)
    assert [e.id for e in once] == [e.id for e in again]
    assert [e.id for e in once] != [f"q{i}" for i in range(20)]
    with pytest.raises(corpus.CorpusError, match="not found"):
        corpus.dev_questions(tmp_path / "missing.json")


@pytest.mark.parametrize("growth", sorted(corpus.GROWTHS))
def test_synthetic_stages_reach_each_target_with_distinct_passages(growth):
    base = [Document("dev:1", "", paragraphs=("one paragraph here.", "another one here."))]
    seeds = [Document(f"wiki:{i}", f"First sentence {i}. Second sentence {i}. Third {i}.")
             for i in range(7)]
    seen, totals = set(), []
    for target, stage, total in corpus.synthetic_stages(base, seeds, [10, 25, 60], growth):
        assert total >= target
        totals.append(total)
        for doc in stage:
            for p in split_passages(doc):
                assert p.pid not in seen
                seen.add(p.pid)
    assert len(seen) == totals[-1]
    assert totals == sorted(totals)
    assert passage_id("dev:1", 0) in seen and passage_id("dev:1", 1) in seen  # base first
    with pytest.raises(corpus.CorpusError):
        list(corpus.synthetic_stages([], [], [5]))


def test_heaps_fit_recovers_the_law_it_was_given():
    # word n is new whenever floor(3 * n**0.5) grows: V(N) ~= 3 * N**0.5
    tokens, vocabulary = [], 0
    for n in range(1, 20_001):
        if int(3 * n ** 0.5) > vocabulary:
            vocabulary += 1
            tokens.append(f"w{vocabulary}")
        else:
            tokens.append(tokens[-1])
    scale, beta = corpus.heaps_fit(tokens)
    assert beta == pytest.approx(0.5, abs=0.01) and scale == pytest.approx(3, rel=0.05)


def test_natural_growth_keeps_inventing_words_on_the_seeds_zipf_curve():
    """Rotated copies stop adding words once every seed is in; the natural growth keeps
    adding new ones (Heaps' law), reuses the seeds' words by their frequency, and gives the
    same corpus every time."""
    words = [f"word{i}" for i in range(400)]
    seeds = [Document(f"wiki:{i}", " ".join(words[int(400 / (1 + j % 97)) - 1] + " the"
                                            for j in range(i, i + 60)) + ".")
             for i in range(40)]

    def grown(growth: str, n: int) -> list[Document]:
        return list(itertools.islice(corpus.GROWTHS[growth](seeds), n))

    for growth, new_words in (("rotated", False), ("natural", True)):
        docs = grown(growth, 400)
        vocab = [set(analyzer.terms(" ".join(d.text for d in docs[:n]))) for n in (40, 400)]
        assert (len(vocab[1]) > len(vocab[0])) is new_words, growth
    natural = grown("natural", 400)
    assert [d.text for d in natural] == [d.text for d in grown("natural", 400)]
    assert natural[:40] == seeds
    later = Counter(w for d in natural[40:] for w in d.text.rstrip(".").split())
    assert later.most_common(1)[0][0] == "the"  # the seeds' most frequent word stays so
    assert all(len(split_passages(d)) == 1 for d in natural[40:])


def _result() -> dict:
    lat = {"n": 2, "p50": 10.0, "p95": 12.0, "p99": 12.5, "mean": 11.0, "min": 9.0}
    row = {"latency": lat, "latency_ms": [9.0, 11.0], "f1": 50.0, "exact_match": 40.0,
           "answers": ["a", "b"]}
    naive_row = {**row, "latency": {**lat, "p50": 60.0, "p95": 70.0, "p99": 71.0},
                 "latency_ms": [55.0, 65.0]}
    rank_row = {"passages": 1000, "exact": lat, "capped": lat, "capped_overlap_at_k": 1.0,
                "k": 5, "cap": 1000,
                "redis_bytes_per_passage_index_only": 900}
    return {
        "settings": {"quick": True, "ks": [1, 5], "concurrency": [1, 4], "masters": 2,
                     "worker_threads": 1},
        "machine": {"cpu": "test cpu", "cores": 2, "torch": "x", "loadavg_at_start": [0.1]},
        "reader": {"name": "tiny", "random_qa_head": False},
        "systems": {"shardqa int8": {1: row, 5: row}, "naive (eager HF)": {1: naive_row,
                                                                           5: naive_row}},
        "throughput": {"shardqa int8": {1: {"questions_per_s": 20.0, "latency": lat},
                                        4: {"questions_per_s": 30.0, "latency": lat}}},
        "cached": {"redis_get_cluster_client": lat, "redis_get_direct_node": lat,
                   "http_api": lat},
        "rank_scale": [rank_row, {**rank_row, "passages": 5000},
                       {**rank_row, "growth": "natural", "vocabulary": 700},
                       {**rank_row, "growth": "natural", "passages": 5000, "vocabulary": 2100,
                        "capped": {**lat, "p50": 25.0}}],
        "quality": {"fp32": {"exact_match": 60.0, "f1": 70.0, "count": 5,
                             "f1_delta_vs_fp32": 0.0},
                    "int8": {"exact_match": 59.0, "f1": 68.5, "count": 5,
                             "f1_delta_vs_fp32": -1.5}},
    }


def test_vs_naive_compares_p50_on_the_same_questions():
    r = _result()
    ratios = vs_naive(r["systems"], [1, 5])
    assert ratios == {"shardqa int8": {1: 6.0, 5: 6.0}}


def test_goals_say_what_was_reached_and_what_not():
    r = _result()
    r["vs_naive"] = vs_naive(r["systems"], [1, 5])
    by_name = {g["goal"].split(" (")[0]: g for g in goals(r)}
    assert by_name["uncached p50 through the API, k=5"]["reached"] is True
    assert by_name["faster than naive, k=5"]["measured"] == 6.0
    assert by_name["cached p50, HTTP API"]["reached"] is False  # 10 ms > 1 ms
    assert by_name["int8 F1 cost on dev"]["reached"] is False  # -1.5 F1
    rotated, natural = [g for g in goals(r) if g["goal"].startswith("rank p50")]
    assert "rotated copies" in rotated["goal"] and "natural vocabulary" in natural["goal"]
    assert rotated["measured"] == 1.0 and rotated["reached"] is True
    assert natural["measured"] == 2.5 and natural["reached"] is False


def test_report_writes_json_markdown_and_plots(tmp_path):
    r = _result()
    r["vs_naive"] = vs_naive(r["systems"], [1, 5])
    r["goals"] = goals(r)
    paths = report.write(r, tmp_path / "run.json")
    names = {p.name for p in paths}
    assert {"run.json", "run.md", "run-readme.md", "run-latency-k.png", "run-rank-size.png",
            "run-throughput.png"} <= names
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "run.md").read_text()
    assert "| shardqa int8 | 5 | 10.0 | 12.0 | 12.5 | 2 | 50.0 | 40.0 |" in md
    assert "| natural vocabulary | 5,000 | 2,100 | - | 10.00 | 12.00 | 25.00 |" in md
    assert "**no**" in md
    readme = (tmp_path / "run-readme.md").read_text()
    assert readme.startswith("## Performance")
    assert "| shardqa int8 | 10.0 / 12.0 | 10.0 / 12.0 | 20.0 / 30.0 | 50.0 (2) |" in readme
    # the JSON read back (string keys) renders the same table
    again = json.loads((tmp_path / "run.json").read_text())
    assert report.markdown(again) == md


# --- against the real pipeline ---------------------------------------------------------------

def test_pattern_baseline_reads_candidates_one_by_one_and_agrees(shared_pipeline):
    client = shared_pipeline
    pmap = partitions.load(client)
    # the pipeline reading every candidate and keeping the best span score: what the
    # baseline does, one request at a time
    asker = Asker(client, min_rank_ratio=0, retrieval_weight=0)
    for question in QUESTIONS[:3]:
        ms, answer = pattern_answer(client, pmap, question, 3)
        assert ms > 0
        assert answer == asker.ask(question, 3, use_cache=False).answer


def test_naive_baseline_agrees_with_the_reader_on_single_window_passages(
        shared_pipeline, tiny_checkpoint):
    client = shared_pipeline
    pmap = partitions.load(client)
    naive = NaiveBaseline(str(tiny_checkpoint), max_seq_len=384, threads=1)
    asker = Asker(client)
    for question in QUESTIONS[:3]:
        _ms, answer = naive.answer(client, pmap, question, 1)
        assert answer == asker.ask(question, 1, use_cache=False).answer


def test_capped_rank_equals_the_exact_rank_when_the_cap_covers_every_posting(
        shared_pipeline):
    client = shared_pipeline
    pmap = partitions.load(client)
    for question in QUESTIONS:
        exact = ranking.rank(client, pmap, question, 3, cap=0)
        assert ranking.rank(client, pmap, question, 3, cap=10_000) == exact


def test_a_cap_of_one_reads_one_posting_per_term_and_scores_what_it_finds_exactly(
        shared_pipeline):
    client = shared_pipeline
    pmap = partitions.load(client)
    skipped = 0
    for question in QUESTIONS:
        terms = set(analyzer.query_terms(question))
        every = {r.pid: r.score for r in ranking.rank(client, pmap, question, 10_000, cap=0)}
        capped = ranking.rank(client, pmap, question, 10_000, cap=1)
        assert capped and {r.pid for r in capped} <= set(every)
        for found in capped:
            assert found.score == pytest.approx(every[found.pid])
        assert max(Counter(r.partition for r in capped).values()) <= len(terms)
        assert ranking.rank(client, pmap, question, 3, cap=1) == capped[:3]
        skipped += len(every) - len(capped)
    assert skipped > 0  # the cap left postings unread somewhere in this corpus


def test_option_speed_measures_every_option_on_the_ranked_candidates(
        shared_pipeline, tiny_artifact):
    client = shared_pipeline
    pmap = partitions.load(client)
    examples = [SquadExample(str(i), "t", 0, "", q, ("Gustave Eiffel",), (0,))
                for i, q in enumerate(QUESTIONS[:2])]
    cands = candidates(client, pmap, examples, 5)
    assert all(c and all(score > 0 for score, _t, _tok in c) for c in cands)
    assert all([s for s, _t, _tok in c] == sorted([s for s, _t, _tok in c], reverse=True)
               for c in cands)
    rows = {r["option"]: r for r in option_speed(tiny_artifact, examples, cands, 1, True)}
    assert len(rows) == 5
    full = rows["fp32, length-bucketed, all k read"]
    skip = rows[f"fp32 + skip candidates < {SKIP_RATIO:g} x best rank score (shipped)"]
    assert skip["mean_windows"] <= full["mean_windows"]
    assert full["speedup_vs_fp32_all_k"] == 1.0
    # padding to max_seq_len changes the cost, not the answer: compared answer by answer
    assert rows["fp32, padded to max_seq_len"]["same_answers_as_fp32_all_k"] == 2
    assert full["same_answers_as_fp32_all_k"] == 2


# --- the peers (issue 16) ---------------------------------------------------------------------

def _table_result() -> dict:
    """A run with every kind of system: shardqa deployed both ways, the peers, baselines."""
    r = _result()
    lat = {"n": 2, "p50": 10.0, "p95": 12.0, "p99": 12.5, "mean": 11.0, "min": 9.0}
    names = {comparison.DEPLOYED_BM25: ("api", 10.0), "shardqa fp32, hybrid": ("api", 20.0),
             comparison.ONE_PROCESS: ("in-process", 8.0),
             "Haystack 3.4.1 (fp32, BM25L)": ("in-process", 200.0),
             "the-pattern style (fp32 workers)": ("in-process", 50.0),
             comparison.NAIVE: ("in-process", 100.0)}
    r["systems"], r["throughput"], r["system_info"] = {}, {}, {}
    for name, (kind, p50) in names.items():
        row = {"latency": {**lat, "p50": p50}, "latency_ms": [p50, p50], "f1": 50.0,
               "exact_match": 40.0, "answers": ["a", "b"]}
        r["systems"][name] = {1: row, 5: row}
        r["throughput"][name] = {c: {"questions_per_s": 1000 / p50, "latency": lat,
                                     "errors": 0} for c in (1, 4)}
        r["system_info"][name] = {"kind": kind, "how": f"how {name} runs"}
    option = {"mean_windows": 5.0, "f1": 50.0, "f1_delta_vs_fp32_all_k": 0.0, "exact_match": 40.0,
              "questions": 2, "same_answers_as_fp32_all_k": 2}
    r["options"] = {"k": 5, "threads": 2, "question_tokenization": {
        "question_tokenize_us": 30.0, "pairs_per_question": 5.0, "saved_us_per_question": 120.0,
        "shipped_pairs_per_question": 1.8, "shipped_saved_us_per_question": 24.0}, "rows": [
        {**option, "option": "fp32, padded to max_seq_len", "p50_ms": 400.0,
         "speedup_vs_fp32_all_k": 0.5},
        {**option, "option": "fp32, length-bucketed, all k read", "p50_ms": 200.0,
         "speedup_vs_fp32_all_k": 1.0},
        {**option, "option": f"fp32 + skip candidates < {SKIP_RATIO:g} x best rank score "
         "(shipped)", "p50_ms": 50.0, "mean_windows": 1.8, "speedup_vs_fp32_all_k": 4.0}]}
    r["vs_naive"] = vs_naive(r["systems"], [1, 5])
    return r


def test_the_table_has_every_systems_row_and_says_what_the_ratios_are_made_of():
    r = _table_result()
    r["throughput"][comparison.NAIVE][4]["errors"] = 3
    readme = report.readme_section(r, Path("run.json"))
    for name in r["systems"]:
        rows = [line for line in readme.splitlines() if line.startswith(f"| {name} |")]
        assert len(rows) == 1, name
        p50 = r["systems"][name][5]["latency"]["p50"]
        assert f"| {p50:,.1f} / 12.0 |" in rows[0]
        failed = " (3 failed)" if name == comparison.NAIVE else ""
        assert f"| {1000 / p50:,.1f} / {1000 / p50:,.1f}{failed} | 50.0 (2) |" in rows[0]
        assert f"**{name}**: how {name} runs" in readme
    # deployed BM25 against one process: +2 ms a question at k=5; the naive ratio split
    assert "+2.0 ms at k=5" in readme
    assert "10.00x faster" in readme and "2.00x and the candidate floor 4.00x" in readme
    assert "is 12.50x faster than naive: none of the ratio is the distributed design's" in readme
    # shardqa deployed first, then the one-process system, Haystack, the baselines
    order = [line.split(" | ")[0][2:] for line in readme.splitlines()
             if line.startswith("| ") and " / " in line and "p50" not in line]
    assert order[:3] == [comparison.DEPLOYED_BM25, "shardqa fp32, hybrid",
                         comparison.ONE_PROCESS]
    assert order[3].startswith("Haystack") and order[-1] == comparison.NAIVE
    assert "fair comparison with the peers" in readme
    assert "the same answer on 2 of 2 questions" in readme  # answers compared, not F1
    assert "saves 24 µs per question at the shipped floor's 1.80 pairs" in readme
    # only the deployed systems are judged by the goals
    assert {g["goal"].split("(")[-1] for g in goals(r) if "k=5 (" in g["goal"]} == \
        {"shardqa fp32, BM25)"}


def test_a_run_without_the_peer_extra_says_haystack_was_skipped(monkeypatch):
    monkeypatch.setattr(haystack_peer.importlib.util, "find_spec", lambda name: None)
    why = haystack_peer.missing()
    assert why and "shardqa[peer]" in why
    r = _table_result()
    r["peers"] = {"haystack": {"skipped": why}}
    assert f"Haystack was not measured in this run: {why}." in report.markdown(r)


def test_one_process_system_answers_as_the_deployed_pipeline(shared_pipeline, tiny_artifact):
    """The same BM25, floor, reader and merge as the asker, without Redis: the same answers,
    one at a time and when questions arrive together (batched)."""
    client = shared_pipeline
    pmap = partitions.load(client)
    one = OneProcessQA(tiny_artifact, corpus.passages(CORPUS), threads=1)
    try:
        question = "Who designed the Eiffel Tower?"
        hits = one.bm25.top(question, 3)
        assert one.passages[hits[0].index].doc_id == "eiffel"
        exact = ranking.rank(client, pmap, question, 3, cap=0)
        assert [one.passages[h.index].pid for h in hits] == [r.pid for r in exact]
        for h, r in zip(hits, exact, strict=True):  # Lucene's form drops the (k1 + 1)
            assert h.score * (ranking.K1 + 1) == pytest.approx(r.score, rel=1e-4)
        asker = Asker(client, retrieval_mode="bm25")
        expected = [asker.ask(q, 5, use_cache=False).answer for q in QUESTIONS]
        alone = [one.answer(q, 5) for q in QUESTIONS]
        assert all(ms > 0 for ms, _a in alone)
        assert [a for _ms, a in alone] == expected
        together, _wall = run_concurrent(lambda q: one.answer(q, 5)[1], QUESTIONS, 4)
        assert together == expected
    finally:
        one.close()


def test_haystack_peer_answers_from_the_retrieved_passage(tiny_checkpoint):
    if haystack_peer.missing():
        pytest.skip(haystack_peer.missing())
    peer = haystack_peer.HaystackQA(tiny_checkpoint, corpus.passages(CORPUS), threads=1)
    ms, answer = peer.answer("Who designed the Eiffel Tower?", 1)
    assert ms > 0
    assert answer and answer in CORPUS[0].text  # the random reader's span, but in the top passage


def test_floor_sweep_replays_a_setting_as_the_asker_merges():
    import numpy as np

    from bench.floor_sweep import Candidate, replay
    from models.reader import Span

    def candidate(pid: str, score: float, answer: str, span_score: float) -> Candidate:
        tokens = PassageTokens(np.zeros(3, np.int32), np.zeros((3, 2), np.int32),
                               np.asarray([[0, 3]], np.int32))
        return Candidate(pid, score, answer, tokens, Span(0, 0, 0, len(answer), answer,
                                                          span_score))

    gold = passage_id("T", 0)
    example = SquadExample("q", "T", 0, "", "Who?", ("Eiffel",), (0,))
    found = [candidate(gold, 10.0, "Eiffel", 1.0), candidate("other.0", 6.0, "Paris", 3.0)]
    # everything read, retrieval ignored: the reader's higher span (the wrong passage) wins
    assert replay([example], [found], 0.0, 0.0)["f1"] == 0.0
    # weight 8 adds 8 x 1.0 to the best-ranked passage (9) and 8 x 0.6 to the other (7.8)
    assert replay([example], [found], 0.0, 4.0)["f1"] == 0.0  # 5 against 5.4
    row = replay([example], [found], 0.0, 8.0)
    assert row["f1"] == 100.0 and row["passages"] == 2 and row["gold_read_pct"] == 100.0
    # a floor of 0.85 x the best reads only the first
    assert replay([example], [found], 0.85, 0.0)["passages"] == 1
