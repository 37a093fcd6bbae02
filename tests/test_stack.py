"""Issue 5: `shardqa up` starts cluster, workers and API in the background; `down` stops them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from cluster import keys
from cluster.connection import Target, connect
from cluster.errors import ClusterError
from cluster.local import port_in_use, process_alive
from cluster.partitions import passage_id
from cluster.waiting import until
from gears.asker import Asker, NoReply
from models import store
from shardqa.stack import NO_ENCODER, LocalStack, ensure_model, wait_healthy, worker_name
from tests.conftest import free_port_base, run_cli, run_up


def write_corpus(path: Path) -> Path:
    path.write_text("\n".join(json.dumps(d) for d in [
        {"id": "eiffel", "title": "Eiffel Tower", "text": "The Eiffel Tower was designed by "
         "the company of Gustave Eiffel and built from 1887 to 1889."},
        {"id": "moon", "title": "Moon", "text": "The Moon is the only natural satellite of "
         "Earth."},
    ]) + "\n")
    return path


def ask_api(api_port: int, question: str) -> dict:
    url = f"http://127.0.0.1:{api_port}/qa?" + urllib.parse.urlencode({"q": question})
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())

def eventually(probe, timeout: float, what: str):
    """``probe()``'s first truthy result within ``timeout`` seconds (a bound, not a claim)."""
    return until(probe, timeout, 0.2, what=what, error=AssertionError)


def restarted_worker(client, stack: LocalStack, master: str, old: int) -> int | None:
    """The new PID of ``master``'s worker once it heartbeats with a model, else None."""
    pid = stack.state().get("workers", {}).get(master)
    if not pid or pid == old or not process_alive(pid):
        return None
    for raw in client.hvals(keys.workers()):
        beat = json.loads(raw)
        if beat.get("pid") == pid and time.time() - beat["time"] < 5 and beat.get("model"):
            return pid
    return None


def answer_key(asker: Asker, question: str):
    try:
        answer = asker.ask(question, use_cache=False)
    except NoReply:
        return None
    return answer.answer, answer.passage_id, round(answer.score, 4)


def test_up_ask_down(tmp_path, tiny_artifact):
    cdir = tmp_path / "stack"
    base = free_port_base(3)
    api_port = free_port_base(1)
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    env = {"SHARDQA_DIR": str(cdir)}
    try:
        run_up(base, api_port, "--model", str(tiny_artifact), "--threads", "1",
               "--corpus", str(corpus), env=env)
        state = LocalStack(cdir).state()
        pids = list(state["workers"].values()) + [state["api"]["pid"]]
        assert len(state["workers"]) == 3 and all(process_alive(p) for p in pids)
        body = ask_api(api_port, "Who designed the Eiffel Tower?")
        # only the Eiffel passage shares a word with the question, so it is the one read
        assert body["passage"]["title"] == "Eiffel Tower"
        assert body["passages_read"] == [passage_id("eiffel", 0)]
        assert body["answer"] and body["answer"] in body["passage"]["text"]
        run_up(base, api_port, "--model", str(tiny_artifact), env=env, timeout=120)
        assert LocalStack(cdir).state()["workers"] == state["workers"]  # nothing restarted
        supervisor = LocalStack(cdir).supervisor_pid()
        assert supervisor and process_alive(supervisor)
        # issue 14: SIGKILL a worker; the supervisor restarts it and it answers as before
        client = connect(Target(directory=str(cdir)))
        asker = Asker(client, timeout_s=20)
        question = "When was the Eiffel Tower built?"
        before = answer_key(asker, question)
        assert before is not None and before[0]
        master, old = sorted(state["workers"].items())[0]
        os.kill(old, signal.SIGKILL)
        new = eventually(lambda: restarted_worker(client, LocalStack(cdir), master, old), 120,
                         f"a new worker for {master} heartbeats with a model")
        assert eventually(lambda: answer_key(asker, question), 60, "an answer") == before
        client.close()
        supervised = json.loads(run_cli("status", "--json", env=env).stdout)["supervised"]
        record = supervised[worker_name(master)]
        assert (record["pid"], record["restarts"], record["last_exit"]) == (new, 1, -9)
        assert all(supervised[worker_name(m)]["restarts"] == 0 for m in state["workers"]
                   if m != master)
        plain = run_cli("status", env=env)
        assert plain.returncode == 0 and f"worker for {master}" in plain.stdout
        log = (cdir / "logs" / "supervisor.log").read_text()
        assert f"worker for {master} exited (code -9); restarting in 0.5s" in log
        pids.append(new)
        ask = run_cli("ask", "Who designed the Eiffel Tower?", "--json", env=env)
        assert ask.returncode == 0 and json.loads(ask.stdout)["cached"] is True
        status = run_cli("status", "--json", env=env)
        assert status.returncode == 0
        assert sum(p["passages"] for p in json.loads(status.stdout)["partitions"]) == 2
    finally:
        down = run_cli("down", "--purge", env=env)
    assert down.returncode == 0, down.stderr
    assert not any(process_alive(p) for p in pids)
    assert not process_alive(supervisor)
    assert not port_in_use(api_port) and not any(port_in_use(base + i) for i in range(3))


@pytest.mark.slow
def test_up_with_its_defaults_answers_with_the_bundled_reader(tmp_path):
    """``shardqa up`` as the README runs it: no --model (the bundled reader and the default
    passage encoder, exported on first use), default masters and threads; only the ports are
    free ones, beside other clusters."""
    env = {"SHARDQA_DIR": str(tmp_path / "stack"),
           "SHARDQA_ARTIFACTS": str(tmp_path / "artifacts")}  # a fresh export, not a cache
    base, api_port = free_port_base(3), free_port_base(1)
    pids: list[int] = []
    try:
        run_up(base, api_port, "--corpus", str(write_corpus(tmp_path / "corpus.jsonl")),
               env=env, timeout=600)
        state = LocalStack(tmp_path / "stack").state()
        pids = list(state["workers"].values()) + [state["api"]["pid"]]
        assert len(state["workers"]) == 3
        for question, expected in [("Who designed the Eiffel Tower?", "Gustave Eiffel"),
                                   ("When was the Eiffel Tower built?", "1887 to 1889"),
                                   ("What is the only natural satellite of Earth?", "Moon")]:
            body = ask_api(api_port, question)
            assert expected in body["answer"], (question, body)
            # the default passage encoder was pushed too: hybrid, dense found the passage
            assert body["retrieval"]["mode"] == "hybrid" and body["retrieval"]["dense"]
        client = connect(Target(directory=str(tmp_path / "stack")))
        try:
            rows = [r for r in store.list_models(client) if r.get("current_on")]
        finally:
            client.close()
        assert {r["name"] for r in rows} == {"minilm-squad", "minilm-l6-encoder"}
        # --reader-variant auto: bf16 where this CPU has fast bf16, else fp32
        from models.variants import choose_reader_variant

        assert {r["variant"] for r in rows if r["kind"] == "reader"} == {
            choose_reader_variant("auto")}
    finally:
        down = run_cli("down", "--purge", env=env)
    assert down.returncode == 0, down.stderr
    assert pids and not any(process_alive(p) for p in pids)
    assert not port_in_use(api_port) and not any(port_in_use(base + i) for i in range(3))
def test_up_pushes_the_reader_variant_asked_for(cluster, tiny_artifact):
    """``up --reader-variant``: the variant every master serves is the one asked for; without
    it, a reader already pushed stays as it is."""
    client = cluster.client()

    def current() -> list[tuple[str, str]]:
        return sorted({(r["name"], r["variant"]) for r in store.list_models(client)
                       if r["kind"] == "reader" and r["current_on"]})

    for variant in ("int8", "fp32"):
        ensure_model(client, str(tiny_artifact), NO_ENCODER, reader_variant=variant)
        assert current() == [("tiny", variant)]
        ensure_model(client, None, NO_ENCODER)  # a reader is there: kept, in its variant
        assert current() == [("tiny", variant)]


def test_up_does_not_count_a_just_killed_workers_heartbeat(cluster, tmp_path):
    """Issue 14: a worker killed a second ago still has a fresh heartbeat; ``up`` took it
    for a healthy worker. A heartbeat counts only from the live PID the stack records."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    stack = LocalStack(tmp_path / "stack")
    stack.dir.mkdir(parents=True)
    client = cluster.client()
    masters = cluster.masters

    def beat(pid: int) -> None:
        for m in masters:
            client.hset(keys.workers(), f"w-{m}", json.dumps(
                {"master": m, "pid": pid, "time": time.time(), "model": "tiny:1",
                 "partitions": []}))

    try:
        stack.save({"workers": {m: gone.pid for m in masters}, "api": None})
        beat(gone.pid)
        with pytest.raises(ClusterError, match="without heartbeat or model"):
            wait_healthy(client, masters, None, 1.0, stack)
        wait_healthy(client, masters, None, 1.0)  # without the stack it would have passed
        stack.save({"workers": {m: os.getpid() for m in masters}, "api": None})
        beat(os.getpid())
        wait_healthy(client, masters, None, 5.0, stack)
    finally:
        client.delete(keys.workers())


def test_supervisor_backoff_doubles_to_a_cap():
    from shardqa import supervisor

    delays = [supervisor.backoff(n) for n in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
