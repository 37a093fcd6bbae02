"""Issue 15.2: the Python API (shardqa.connect) against a real cluster with real workers."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

import shardqa
from cluster import acl
from cluster.errors import ClusterError, ShardqaError
from gears.asker import Asker, QuestionError
from loaders.cli import IngestAborted
from loaders.documents import InputError
from tests.conftest import REPO, run_cli
from tests.corpus import QUESTIONS


@pytest.fixture(scope="module")
def qa(shared_pipeline, redis_cluster):
    with shardqa.connect(dir=redis_cluster.target.directory, timeout=30) as client:
        yield client


def passages(qa) -> int:
    return sum(p["passages"] for p in qa.status()["partitions"])


def test_ask_returns_a_typed_answer_equal_to_the_asker(qa, redis_cluster):
    answer = qa.ask(QUESTIONS[1], k=3, use_cache=False)
    assert isinstance(answer, shardqa.Answer) and not answer.cached
    assert answer.answer and answer.passage.text[answer.start:answer.end] == answer.answer
    assert answer.passage.title == "Mount Everest" or answer.passage.id
    assert set(answer.timings) >= {"rank", "total"} and answer.extra["k"] == 3
    assert answer.generation == answer.extra["generation"]  # extra fields as attributes
    with pytest.raises(AttributeError):
        _ = answer.no_such_field
    with pytest.raises(dataclasses.FrozenInstanceError):
        answer.answer = "forged"
    direct = Asker(redis_cluster.client_as("api")).ask(QUESTIONS[1], 3).public()
    again = qa.ask(QUESTIONS[1], k=3)
    assert again.cached and again.answer == answer.answer == direct["answer"]
    assert again.to_dict()["passage"] == direct["passage"]
    assert json.loads(json.dumps(again.to_dict()))["answer"] == answer.answer


def test_unknown_fields_pass_through():
    passage = {"id": "d.0", "title": "T", "text": "a b"}
    body = {"question": "q", "answer": "a", "score": 1.0, "start": 0, "end": 1, "cached": False,
            "passage": passage, "timings_ms": {"total": 1},
            "retrieval": {"bm25": 1, "dense": 3}, "shiny": [{"answer": "b"}],
            "answers": [{"answer": "a", "score": 1.0, "passage": passage, "start": 0, "end": 1},
                        {"answer": "b", "score": 0.5, "confidence": 0.25, "passage": passage,
                         "start": 2, "end": 3, "retrieval": {"bm25": 1}}]}
    answer = shardqa.Answer.from_body(body)
    assert answer.retrieval == {"bm25": 1, "dense": 3} and answer.shiny[0]["answer"] == "b"
    second = answer.answers[1]
    assert isinstance(second, shardqa.AnswerSpan) and second.passage.text[2:3] == "b"
    assert second.confidence == 0.25 and answer.answers[0].confidence is None
    assert answer.to_dict() == body
    del body["answers"]
    assert shardqa.Answer.from_body(body).answers == ()


def test_ask_n_returns_the_distinct_answers_typed(qa, redis_cluster):
    from models.squad import normalize_answer

    answer = qa.ask(QUESTIONS[0], k=5, n=3, use_cache=False)
    assert len(answer.answers) == 3 and answer.answers[0].answer == answer.answer
    assert len({normalize_answer(a.answer) for a in answer.answers}) == 3
    for a in answer.answers:
        assert isinstance(a, shardqa.AnswerSpan) and a.passage.id
        assert a.passage.text[a.start:a.end] == a.answer and 0 < a.confidence <= 1
    direct = Asker(redis_cluster.client_as("api")).ask(QUESTIONS[0], 5, 3).public(3)
    assert answer.to_dict()["answers"] == direct["answers"]
    assert qa.ask(QUESTIONS[0], k=5).answers == ()  # n=1: the answer alone, as before
    for n in (0, 11):
        with pytest.raises(QuestionError, match="n must be an integer from 1 to 10"):
            qa.ask(QUESTIONS[0], n=n)


@pytest.mark.parametrize("question,k", [("", 5), ("   ", 5), ("x" * 1001, 5), ("ok?", 0),
                                        (None, 5)])
def test_bad_questions_raise_question_error(qa, question, k):
    with pytest.raises(QuestionError):
        qa.ask(question, k=k)


def test_ingest_dicts_and_paths_with_the_loaders_validation(qa, tmp_path):
    before = passages(qa)
    bad = [{"id": "ok1", "title": "Ok", "text": "The Rhine flows through Basel and Cologne."},
           {"id": "nope", "title": "No text"}]
    with pytest.raises(IngestAborted, match="python:2: missing text field"):
        qa.ingest(bad, on_error="abort")
    assert passages(qa) == before  # nothing written
    report = qa.ingest(bad)
    assert report.documents == 1 and report.written == 1
    assert report.errors == ["python:2: missing text field 'text'"]
    assert passages(qa) == before + 1  # wait=True: indexed before it returned
    path = tmp_path / "more.jsonl"
    path.write_text(json.dumps({"id": "danube", "text": "The Danube flows into the Black "
                                "Sea."}) + "\n{not json\n")
    report = qa.ingest(path)
    assert report.written == 1 and len(report.errors) == 1 and "invalid JSON" in report.errors[0]
    assert qa.ingest([str(path)]).unchanged == 1  # re-ingesting changes nothing
    with pytest.raises(InputError, match="no such file"):
        qa.ingest([tmp_path / "missing.jsonl"])
    assert "Danube" in qa.ask("Where does the Danube flow into?").passage.text


def test_status_reports_partitions_and_workers(qa, redis_cluster):
    report = qa.status()
    assert len(report["partitions"]) == 16 and len(report["workers"]) == 3
    assert sum(p["passages"] for p in report["partitions"]) > 0


def test_connect_by_url_and_clear_errors(shared_pipeline, redis_cluster, tmp_path):
    host, port = redis_cluster.local.startup_nodes()[0]
    password = acl.load(redis_cluster.local.dir)["api"]
    with shardqa.connect(f"redis://api:{quote(password, safe='')}@{host}:{port}") as qa:
        assert qa.ask(QUESTIONS[0]).answer
    with pytest.raises(ClusterError, match="no cluster found"):
        shardqa.connect(dir=tmp_path / "none")
    with pytest.raises(ClusterError, match="refused user 'api'"):
        shardqa.connect(f"redis://api:wrong@{host}:{port}")
    with pytest.raises(ShardqaError, match="url or a dir"):
        shardqa.connect("redis://x:1", dir=tmp_path)


def test_import_shardqa_stays_light():
    code = ("import sys, shardqa; heavy = {'redis', 'torch', 'transformers', 'flask'} & "
            "set(sys.modules); assert not heavy, heavy; assert callable(shardqa.connect)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_ask_uses_the_python_api(qa, redis_cluster):
    out = run_cli("ask", QUESTIONS[4], "--json", "--dir", redis_cluster.target.directory,
                  check=True)
    body = json.loads(out.stdout)
    assert body["answer"] == qa.ask(QUESTIONS[4]).answer and "timings_ms" in body
    bad = run_cli("ask", "   ", "--dir", redis_cluster.target.directory)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: the question is empty"


def test_cli_ask_n_prints_the_next_answers(qa, redis_cluster):
    directory = redis_cluster.target.directory
    expected = qa.ask(QUESTIONS[1], k=5, n=3).answers
    out = run_cli("ask", QUESTIONS[1], "--n", "3", "--dir", directory, check=True,
                  env={"COLUMNS": "1000"})  # rich wraps at the terminal's width
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{expected[0].answer}  (score ")
    at = lines.index("next answers:")
    for rank, other in enumerate(expected[1:], start=2):  # each with its passage around it
        assert lines[at + 2 * rank - 3].startswith(f"{rank}. {other.answer}  (score ")
        assert other.answer in lines[at + 2 * rank - 2]
    body = json.loads(run_cli("ask", QUESTIONS[1], "--n", "3", "--json", "--dir", directory,
                              check=True).stdout)
    assert [a["answer"] for a in body["answers"]] == [a.answer for a in expected]
    single = run_cli("ask", QUESTIONS[1], "--dir", directory, check=True)
    assert "next answers:" not in single.stdout
    for bad in ("0", "11", "x"):
        proc = run_cli("ask", QUESTIONS[1], "--n", bad, "--dir", directory)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr == "error: n must be an integer from 1 to 10\n"
    proc = run_cli("ask", QUESTIONS[1], "--k", "0", "--dir", directory)
    assert proc.returncode == 2 and proc.stderr == "error: k must be an integer from 1 to 50\n"


def readme_example() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M)
    return next(b for b in blocks if "shardqa.connect(" in b)


def test_readme_example_runs(qa, redis_cluster, tmp_path):
    (tmp_path / ".shardqa").mkdir()
    (tmp_path / ".shardqa" / "cluster").symlink_to(Path(redis_cluster.target.directory))
    out = subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"\d+ passages written, 0 malformed", lines[0])
    answer, title, _score, cached = lines[1].split(" | ")
    assert answer and title and cached in ("True", "False")
    assert lines[2].startswith(answer) and int(lines[4]) > 0
    answers = ast.literal_eval(lines[3])  # [(answer, confidence), ...], best first
    assert answers[0][0] == answer and len(answers) == 3
    assert all(0 <= confidence <= 1 for _, confidence in answers)
