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
from tests import postgres as postgres_server
from tests.conftest import run_cli, run_up
from tests.corpus import QUESTIONS

postgres = postgres_server.postgres  # the PostgreSQL server fixture

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
    except sa.exc.DBAPIError:  # no table yet, or the server is stopped
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


def start_sync(handle, url: str, consumer: str, tmp_path, *args: str) -> subprocess.Popen:
    log = open(tmp_path / f"sync-{consumer}.log", "ab")  # noqa: SIM115 - the child's
    return subprocess.Popen(
        [sys.executable, "-m", "shardqa.cli", "sync", "--dir", handle.target.directory,
         "--db", url, "--consumer", consumer, "--batch-size", "2", "--max-backoff", "0.5",
         "--claim-idle-ms", "300", *args],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ})


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def synthetic_events(n: int) -> list:
    return [question_event(question=f"question {i}", answer=f"answer {i}", passage_id=None,
                           score=float(i), k=5, cached=False, generation=1,
                           timings_ms={"total": 1.0}, client=None) for i in range(n)]


def test_nothing_lost_when_the_job_dies_or_the_database_stops(redis_cluster, postgres,
                                                              tmp_path):
    fresh_log(redis_cluster)
    engine = sa.create_engine(postgres.url)
    schema.metadata.drop_all(engine)
    engine.dispose()
    events = EventLog(redis_cluster.client(), maxlen=1_000_000)
    first, later = synthetic_events(3000), synthetic_events(500)
    for event in first:
        events.put(event)
    assert events.flush(30) and events.dropped == 0

    # a job killed mid-way leaves its batch pending on consumer A
    job_a = start_sync(redis_cluster, postgres.url, "A", tmp_path)
    at_kill = wait_for(lambda: counts(postgres.url)["questions"], 60, "the first rows")
    job_a.send_signal(signal.SIGKILL)
    job_a.wait(10)
    at_kill = counts(postgres.url)["questions"]
    assert 0 < at_kill < len(first)
    # a batch committed but not acknowledged when A died is still unsynced (and pending)
    unsynced = log_state(redis_cluster.client()).unsynced
    assert len(first) - at_kill <= unsynced <= len(first) - at_kill + 2

    # B claims A's pending entries, goes on, and meets a database that stops under it
    job_b = start_sync(redis_cluster, postgres.url, "B", tmp_path)
    try:
        wait_for(lambda: counts(postgres.url)["questions"] > at_kill + 10, 60, "job B to write")
        postgres.stop("immediate")
        for event in later:
            events.put(event)
        assert events.flush(30) and events.dropped == 0
        time.sleep(2)
        assert job_b.poll() is None  # still there, retrying
        assert log_state(redis_cluster.client()).unsynced > len(later)
        postgres.start()
        total = len(first) + len(later)
        wait_for(lambda: counts(postgres.url)["questions"] == total, 120, "every row")
        state = wait_for(lambda: (s := log_state(redis_cluster.client())).unsynced == 0 and s,
                         30, "the acknowledgements")
        assert state.pending == 0 and state.length == total
    finally:
        job_b.send_signal(signal.SIGTERM)
        assert job_b.wait(30) == 0
    engine = sa.create_engine(postgres.url)
    with engine.connect() as conn:
        ids = set(conn.scalars(sa.select(schema.questions.c.event_id)))
    engine.dispose()
    assert ids == {e.event_id for e in first + later}
    log_text = (tmp_path / "sync-B.log").read_text()
    assert "retrying until it works" in log_text


BAD_FEEDBACK = [
    ({}, "missing field 'question'"),
    ({"question": "q", "answer": "a"}, "verdict must be one of right, wrong"),
    ({"question": "q", "answer": "a", "verdict": "maybe"}, "verdict must be one of"),
    ({"question": "q", "verdict": "wrong"}, "missing field 'answer'"),
    ({"question": " ", "answer": "a", "verdict": "wrong"}, "question is empty"),
    ({"question": 3, "answer": "a", "verdict": "wrong"}, "question must be a string"),
    ({"question": "q", "answer": "a", "verdict": "right", "correct_answer": "b"},
     "correct_answer goes with verdict 'wrong' only"),
    ({"question": "q", "answer": "a", "verdict": "wrong", "extra": 1}, "unknown field"),
    ({"question": "q" * 2001, "answer": "a", "verdict": "wrong"}, "longer than 2000"),
    (["q"], "must be a JSON object"),
]


def test_bad_feedback_is_refused_and_logs_nothing(redis_cluster):
    fresh_log(redis_cluster)
    app = create_app(Asker(redis_cluster.client_as("api"), timeout_s=20))
    http = app.test_client()
    for body, message in BAD_FEEDBACK:
        resp = http.post("/feedback", json=body)
        assert resp.status_code == 400, body
        assert message in resp.get_json()["error"]["message"], (body, resp.get_json())
    resp = http.post("/feedback", data="verdict=right")
    assert resp.status_code == 415 and resp.get_json()["error"]["status"] == 415
    resp = http.post("/feedback", data="{not json", content_type="application/json")
    assert resp.status_code == 400
    assert http.get("/feedback").status_code == 405
    assert app.extensions["shardqa_question_log"].events.flush(5)
    assert redis_cluster.client().xlen(keys.log_stream()) == 0
    ok = http.post("/feedback", json={"question": "q", "answer": None, "verdict": "wrong",
                                      "correct_answer": "b"})
    assert ok.status_code == 202 and len(ok.get_json()["id"]) == 32
    assert app.extensions["shardqa_question_log"].events.flush(5)
    assert redis_cluster.client().xlen(keys.log_stream()) == 1


def refused(call) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    except redis.ResponseError as exc:
        return "NOPERM" in str(exc)
    return False


def test_log_users_have_least_privilege(redis_cluster):
    fresh_log(redis_cluster)
    api, syncer = redis_cluster.client_as("api"), redis_cluster.client_as("sync")
    stream = keys.log_stream()
    assert api.xadd(stream, {"kind": "x"})  # the API writes the log...
    assert api.xlen(stream) == 1
    assert refused(lambda: api.xrange(stream))  # ...but cannot read it back
    assert refused(lambda: api.delete(stream))
    assert refused(lambda: api.xtrim(stream, maxlen=0))
    assert refused(lambda: api.hset(stream.replace("events", "other"), "a", 1))
    syncer.xgroup_create(stream, keys.SYNC_GROUP, id="0")
    got = syncer.xreadgroup(keys.SYNC_GROUP, "t", {stream: ">"}, count=10)
    assert syncer.xack(stream, keys.SYNC_GROUP, got[0][1][0][0]) == 1
    assert refused(lambda: syncer.xadd(stream, {"kind": "x"}))  # sync only reads the log
    assert refused(lambda: syncer.delete(stream))
    assert refused(lambda: syncer.get(keys.generation()))
    assert refused(lambda: syncer.hgetall(keys.workers()))


def test_a_refused_log_write_never_fails_the_answer(shared_pipeline, redis_cluster):
    fresh_log(redis_cluster)
    app = create_app(Asker(redis_cluster.client_as("api"), timeout_s=20))
    question_log = app.extensions["shardqa_question_log"]
    question_log.events.client = redis_cluster.client_as("sync")  # may not XADD
    http = app.test_client()
    resp = http.get("/qa", query_string={"q": QUESTIONS[0]})
    assert resp.status_code == 200 and resp.get_json()["answer"]
    assert question_log.events.flush(10)
    assert question_log.events.dropped == 1
    assert metric(http, "shardqa_log_dropped") == 1
    assert redis_cluster.client().xlen(keys.log_stream()) == 0


def http_json(url: str, body: dict | None = None) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_shardqa_up_writes_the_log_behind(tmp_path, tiny_artifact, database):
    """The issue's definition of done: with ``shardqa up``, 100 answers and 10 feedbacks
    become 110 rows (SQLite by default in the cluster folder; PostgreSQL by SHARDQA_DB_URL)."""
    import urllib.parse

    from cluster.local import process_alive
    from shardqa.stack import LocalStack
    from tests.conftest import free_port_base

    cdir = tmp_path / "stack"
    base, api_port = free_port_base(3), free_port_base(1)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "eiffel", "title": "Eiffel Tower", "text": "The Eiffel Tower '
                      'was designed by the company of Gustave Eiffel."}\n')
    env = {"SHARDQA_DIR": str(cdir)}
    url = database
    if database.startswith("sqlite"):  # the default: records.sqlite in the cluster folder
        url = f"sqlite:///{cdir.resolve() / 'records.sqlite'}"
    else:
        env["SHARDQA_DB_URL"] = database
    try:
        run_up(base, api_port, "--model", str(tiny_artifact), "--threads", "1",
               "--corpus", str(corpus), env=env)
        state = LocalStack(cdir).state()
        assert process_alive(state["children"]["sync"]["pid"])
        api = f"http://127.0.0.1:{api_port}"
        for i in range(100):
            q = urllib.parse.urlencode({"q": f"Who designed the Eiffel Tower? {i % 30}"})
            assert http_json(f"{api}/qa?{q}")[0] == 200
        for _ in range(10):
            status, _ = http_json(f"{api}/feedback", {"question": "Who designed it?",
                                                      "answer": "Gustave", "verdict": "right"})
            assert status == 202
        wait_for(lambda: counts(url) == {"questions": 100, "feedback": 10}, 60, "110 rows")
    finally:
        down = run_cli("down", "--purge", env=env)
    assert down.returncode == 0, down.stderr
    assert not process_alive(state["children"]["sync"]["pid"])


def test_the_job_recreates_a_deleted_stream_and_goes_on(redis_cluster, tmp_path):
    """An operator deleting the log (or a flushed master) does not wedge the job."""
    fresh_log(redis_cluster)
    url = f"sqlite:///{tmp_path / 'records.sqlite'}"
    events = EventLog(redis_cluster.client(), maxlen=1000)
    job = start_sync(redis_cluster, url, "C", tmp_path)
    try:
        for event in synthetic_events(5):
            events.put(event)
        wait_for(lambda: counts(url)["questions"] == 5, 60, "the first rows")
        fresh_log(redis_cluster)
        time.sleep(1.5)
        for event in synthetic_events(7):
            events.put(event)
        wait_for(lambda: counts(url)["questions"] == 12, 60, "rows after the deletion")
    finally:
        job.send_signal(signal.SIGTERM)
        assert job.wait(30) == 0
    assert "creating them again" in (tmp_path / "sync-C.log").read_text()


def test_sync_command_errors_are_one_line(redis_cluster, tmp_path):
    d = ["--dir", redis_cluster.target.directory]
    bad_url = run_cli("sync", "--db", "nosuch://x", *d)
    assert bad_url.returncode == 2 and "not a usable SQLAlchemy URL" in bad_url.stderr
    bad_env = run_cli("sync", *d, env={"SHARDQA_SYNC_BATCH": "many"})
    assert bad_env.returncode == 2
    assert "SHARDQA_SYNC_BATCH='many' is not an integer" in bad_env.stderr
    missing = tmp_path / "no-cluster"
    no_cluster = run_cli("sync", "--dir", str(missing))
    assert no_cluster.returncode != 0 and "no cluster found" in no_cluster.stderr
    assert not missing.exists()  # nothing created for a cluster that is not there
    for proc in (bad_url, bad_env, no_cluster):
        assert "Traceback" not in proc.stderr


def test_a_cluster_folder_from_before_the_sync_user_still_starts():
    """users.json written by an older shardqa has no ``sync``: its aclfile is still made
    (``shardqa sync`` then connects as admin, saying so)."""
    from cluster import acl

    text = acl.aclfile({"admin": "a", "worker": "b", "api": "c"})
    assert [line.split()[1] for line in text.splitlines()] == ["default", "admin", "worker",
                                                               "api"]
    assert "user sync" in acl.aclfile({"admin": "a", "worker": "b", "api": "c", "sync": "d"})


def test_replay_asks_the_most_asked_questions_first(shared_pipeline, redis_cluster, tmp_path):
    import json

    url = f"sqlite:///{tmp_path / 'records.sqlite'}"
    engine = sa.create_engine(url)
    schema.create_tables(engine)
    asked = {QUESTIONS[0]: 3, QUESTIONS[1].upper(): 1, QUESTIONS[1]: 4, QUESTIONS[2]: 2}
    rows = []
    for question, times in asked.items():
        for _ in range(times):
            event = question_event(question=question, answer=None, passage_id=None, score=None,
                                   k=5, cached=False, generation=1, timings_ms={},
                                   client=None)
            rows.append(schema.row(event, "0-0")[1])
    with engine.begin() as conn:
        schema.upsert(conn, schema.questions, rows)
    engine.dispose()
    proc = run_cli("replay", "--db", url, "--limit", "2", "--json", "--dir",
                   redis_cluster.target.directory, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # case-folded: QUESTIONS[1] was asked 5 times, QUESTIONS[0] 3 times; QUESTIONS[2] is cut
    assert [(r["question"].casefold(), r["asked"]) for r in out["results"]] == [
        (QUESTIONS[1].casefold(), 5), (QUESTIONS[0].casefold(), 3)]
    assert out["answered"] == 2 and out["errors"] == 0 and out["latency_ms"]["n"] == 2
    missing = run_cli("replay", "--db", f"sqlite:///{tmp_path / 'empty.sqlite'}", "--dir",
                      redis_cluster.target.directory)
    assert missing.returncode != 0 and "cannot read the question log" in missing.stderr
