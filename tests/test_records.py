"""The database of record: answers and feedback go through the log stream into SQL.

Real parts: the session's Redis Cluster (with its ACL users), the tiny reader pipeline, the
Flask app, ``shardqa sync`` as a subprocess, a SQLite file and a PostgreSQL server started
by the tests (tests/postgres.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis
import sqlalchemy as sa

from api.app import create_app
from cluster import keys
from gears.asker import Asker
from records import schema
from records.events import client_id, question_event
from records.log import EventLog, log_state
from tests.conftest import run_cli
from tests.corpus import QUESTIONS
from tests.postgres import postgres  # noqa: F401 - the PostgreSQL server fixture

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str:
    """An empty database of record of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.sqlite'}"
    url = request.getfixturevalue("postgres").url
    engine = sa.create_engine(url)
    schema.metadata.drop_all(engine)
    engine.dispose()
    return url


def fresh_log(handle) -> None:
    """No log stream and no sync group: each test starts from nothing."""
    handle.client().delete(keys.log_stream())


def counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                    for t in ("questions", "feedback")}
    except sa.exc.OperationalError:
        return {"questions": 0, "feedback": 0}
    finally:
        engine.dispose()


def sync(handle, url: str, *args: str) -> subprocess.CompletedProcess:
    return run_cli("sync", "--until-empty", "--dir", handle.target.directory, "--db", url,
                   "--log-level", "WARNING", *args, timeout=120)


def metric(http, name: str) -> float:
    for line in http.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not on /metrics")


def test_answers_and_feedback_land_in_sql(shared_pipeline, redis_cluster, database):
    fresh_log(redis_cluster)
    app = create_app(Asker(redis_cluster.client_as("api"), timeout_s=20), token=TOKEN)
    http = app.test_client()
    questions = [f"{QUESTIONS[i % len(QUESTIONS)]} {i % 20}" for i in range(100)]
    answers = []
    for q in questions:  # 60 distinct questions; the other 40 are answered from the cache
        resp = http.get("/qa", query_string={"q": q, "k": 3}, headers=AUTH)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        answers.append(resp.get_json())
    for i in range(10):
        verdict = "right" if i % 2 else "wrong"
        body = {"question": answers[i]["question"], "answer": answers[i]["answer"],
                "verdict": verdict, **({} if i % 2 else {"correct_answer": f"fix {i}"})}
        resp = http.post("/feedback", json=body, headers=AUTH)
        assert resp.status_code == 202, resp.get_data(as_text=True)
    assert app.extensions["shardqa_question_log"].events.flush(10)
    assert metric(http, "shardqa_log_length") == 110
    assert metric(http, "shardqa_log_lag") == 110  # no sync job ran yet
    assert metric(http, "shardqa_log_maxlen") == 1_000_000

    proc = sync(redis_cluster, database)
    assert proc.returncode == 0, proc.stderr
    assert "synced 110 event(s)" in proc.stdout
    assert metric(http, "shardqa_log_lag") == 0
    assert counts(database) == {"questions": 100, "feedback": 10}
    check_rows(database, questions, answers)

    # delivered again from the start (as after a crash between COMMIT and XACK): no duplicate
    redis_cluster.client().xgroup_setid(keys.log_stream(), keys.SYNC_GROUP, "0")
    again = sync(redis_cluster, database)
    assert again.returncode == 0 and "synced 110 event(s)" in again.stdout, again.stderr
    assert counts(database) == {"questions": 100, "feedback": 10}


def check_rows(url: str, questions: list[str], answers: list[dict]) -> None:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(schema.questions)).mappings().all()
        fb = conn.execute(sa.select(schema.feedback)).mappings().all()
    engine.dispose()
    assert sorted(r["question"] for r in rows) == sorted(questions)
    # 40 repeats are cached at least (all 100 when an earlier test asked them already)
    assert sum(r["cached"] for r in rows) == sum(a["cached"] for a in answers) >= 40
    assert {r["client"] for r in rows} | {r["client"] for r in fb} == {client_id(TOKEN)}
    by_question = {a["question"]: a for a in answers}
    for r in rows:
        a = by_question[r["question"]]
        assert (r["answer"], r["passage_id"], r["k"]) == (
            a["answer"], (a["passage"] or {}).get("id"), 3)
        assert r["total_ms"] is not None and r["total_ms"] > 0
        assert r["cached"] or r["rank_ms"] is not None
    assert sorted(f["verdict"] for f in fb) == ["right"] * 5 + ["wrong"] * 5
    assert {f["correct_answer"] for f in fb if f["verdict"] == "wrong"} == {
        f"fix {i}" for i in range(0, 10, 2)}
