"""``shardqa eval``: the harness itself (metrics, determinism, JSON), on the tiny reader.

The tiny model has random weights, so its scores are near zero; what is tested is that the
right numbers reach the report, the same model gives the same answers every time, and the
eager checkpoint and its TorchScript export read the same spans.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gears.asker import Asker
from models.artifact import load_reader
from models.evaluation import QuestionResult, evaluate_reader, summarize
from models.squad import read_squad
from shardqa.evaluation import evaluate_open, ingest_file
from tests.conftest import run_cli

ARTICLES = {
    "Eiffel_Tower": [
        ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. It is "
         "named after the engineer Gustave Eiffel, whose company designed and built the tower "
         "from 1887 to 1889.",
         [("Who is the Eiffel Tower named after?", ["Gustave Eiffel", "the engineer Gustave "
                                                    "Eiffel"]),
          ("In which city is the Eiffel Tower?", ["Paris"]),
          ("When was the Eiffel Tower built?", ["from 1887 to 1889", "1887 to 1889"])]),
    ],
    "Amazon_River": [
        ("The Amazon River in South America is the largest river by discharge volume of water "
         "in the world. The river rises in the Andes mountains of Peru.",
         [("Where does the Amazon River rise?", ["the Andes mountains of Peru", "Andes"]),
          ("On which continent is the Amazon River?", ["South America"])]),
        ("The Amazon basin holds the largest tropical rainforest on Earth, spread over nine "
         "nations, with the majority in Brazil.",
         [("Which country holds most of the Amazon rainforest?", ["Brazil"])]),
    ],
}


def write_squad(path: Path) -> Path:
    data = []
    qid = 0
    for title, paragraphs in ARTICLES.items():
        ps = []
        for context, qas in paragraphs:
            items = []
            for question, answers in qas:
                qid += 1
                items.append({"id": f"q{qid}", "question": question, "answers": [
                    {"text": a, "answer_start": context.index(a)} for a in answers]})
            ps.append({"context": context, "qas": items})
        data.append({"title": title, "paragraphs": ps})
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def squad(tmp_path_factory) -> Path:
    return write_squad(tmp_path_factory.mktemp("eval") / "mini.json")


def test_summary_averages_scores_and_counts_recall_and_cache():
    results = [
        QuestionResult("a", "x", 1.0, 1.0, 10.0, cached=True, gold_rank=1),
        QuestionResult("b", "y", 0.0, 0.5, 20.0, gold_rank=3),
        QuestionResult("c", "z", 0.0, 0.0, 30.0, gold_rank=None),
        QuestionResult("d", "", 0.0, 0.0, 40.0, gold_rank=7, error="shard timed out"),
    ]
    report = summarize(results, file="f.json", mode="open", model="m", k=10)
    assert report.count == 4
    assert report.exact_match == pytest.approx(25.0)
    assert report.f1 == pytest.approx(37.5)
    assert report.recall == {"1": 25.0, "5": 50.0, "10": 75.0}
    assert report.cache_hit_rate == pytest.approx(0.25)
    assert report.errors == 1
    assert report.latency_ms["p50"] == pytest.approx(25.0)
    assert report.latency_ms["p99"] == pytest.approx(39.7)
    assert report.predictions == {"a": "x", "b": "y", "c": "z", "d": ""}
    reader = summarize(results[:2], file="f.json", mode="reader", model="m")
    assert reader.recall is None and reader.cache_hit_rate is None
    assert summarize(results, file="f", mode="open", model="m", k=3).recall == {"1": 25.0,
                                                                               "3": 50.0}


def test_reader_mode_answers_from_the_paragraph(squad, tiny_artifact):
    examples = read_squad(squad)
    reader, described = load_reader(tiny_artifact)
    assert "fp32" in described
    results = evaluate_reader(examples, reader, progress=False)
    assert [r.id for r in results] == [e.id for e in examples]
    for example, result in zip(examples, results, strict=True):
        assert result.prediction and result.prediction in example.context
        assert 0.0 <= result.f1 <= 1.0 and result.exact_match <= result.f1 + 1e-9
        assert result.latency_ms > 0


def test_checkpoint_and_its_export_read_the_same_spans(squad, tiny_artifact, tiny_checkpoint):
    examples = read_squad(squad)
    eager, described = load_reader(tiny_checkpoint)
    assert "checkpoint" in described
    traced, _ = load_reader(tiny_artifact)
    a = evaluate_reader(examples, eager, progress=False)
    b = evaluate_reader(examples, traced, progress=False)
    assert [r.prediction for r in a] == [r.prediction for r in b]


def test_cli_reader_mode_is_deterministic_and_writes_json(squad, tiny_artifact, tmp_path):
    reports = []
    for run in range(2):
        out = tmp_path / f"report-{run}.json"
        proc = run_cli("eval", str(squad), "--mode", "reader", "--model", str(tiny_artifact),
                       "--variant", "int8", "--threads", "1", "--json", str(out), check=True)
        assert "exact match" in proc.stdout and "recall" not in proc.stdout
        reports.append(json.loads(out.read_text()))
    first, second = reports
    assert first["count"] == 6 and first["mode"] == "reader" and "int8" in first["model"]
    assert first["predictions"] == second["predictions"]
    assert (first["exact_match"], first["f1"]) == (second["exact_match"], second["f1"])
    assert set(first["latency_ms"]) == {"p50", "p95", "p99", "mean"}
    assert first["recall"] is None and first["cache_hit_rate"] is None
    limited = tmp_path / "limited.json"
    run_cli("eval", str(squad), "--model", str(tiny_artifact), "--limit", "2", "--json",
            str(limited), check=True)
    assert sorted(json.loads(limited.read_text())["predictions"]) == ["q1", "q2"]


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model"], "no such folder"),
    (["--no-ingest"], "--no-ingest is for --mode open"),
    (["--mode", "open", "--model", "x"], "--model is for --mode reader"),
])
def test_cli_bad_options_are_one_line_errors(squad, tiny_artifact, args, message):
    proc = run_cli("eval", str(squad), *args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_bad_files_are_one_line_errors(tmp_path, tiny_artifact):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for path in (bad, tmp_path / "missing.json"):
        proc = run_cli("eval", str(path), "--model", str(tiny_artifact))
        assert proc.returncode == 2
        assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_a_checkpoint_cannot_run_int8(tiny_checkpoint, squad):
    proc = run_cli("eval", str(squad), "--model", str(tiny_checkpoint), "--variant", "int8")
    assert proc.returncode == 2 and "needs an exported artifact" in proc.stderr


def test_open_mode_finds_the_gold_paragraphs(pipeline, squad):
    """Retrieval does not depend on the reader's weights: BM25 must put every gold paragraph
    among the 5 passages read when all 5 are read (the test corpus also has Eiffel Tower and
    Amazon documents, so it is not always first)."""
    client = pipeline
    ingest_file(client, str(squad), progress=False)
    examples = read_squad(squad)
    asker = Asker(client, min_rank_ratio=0)  # read all k: recall counts passages read
    first = summarize(evaluate_open(client, examples, k=5, asker=asker, progress=False),
                      file=str(squad), mode="open", model="tiny", k=5)
    assert first.errors == 0 and first.count == 6
    assert first.recall["5"] == 100.0 and 0.0 < first.recall["1"] <= 100.0
    assert first.cache_hit_rate == 0.0
    # every answer carries the pipeline's confidence, so open mode reports calibration too
    assert first.calibration is not None and 0.0 <= first.calibration["ece"] <= 100.0
    second = summarize(evaluate_open(client, examples, k=5, asker=asker, progress=False),
                       file=str(squad), mode="open", model="tiny", k=5)
    assert second.cache_hit_rate == 1.0
    assert second.predictions == first.predictions
