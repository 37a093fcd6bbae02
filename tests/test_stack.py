"""Issue 5: `shardqa up` starts cluster, workers and API in the background; `down` stops them."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from cluster.connection import Target, connect
from cluster.local import port_in_use, process_alive
from cluster.partitions import passage_id
from models import store
from shardqa.stack import LocalStack
from tests.conftest import free_port_base, run_cli


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


def test_up_ask_down(tmp_path, tiny_artifact):
    cdir = tmp_path / "stack"
    base = free_port_base(3)
    api_port = free_port_base(1)
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    env = {"SHARDQA_DIR": str(cdir)}
    try:
        up = run_cli("up", "--port-base", str(base), "--api-port", str(api_port),
                     "--model", str(tiny_artifact), "--threads", "1", "--corpus", str(corpus),
                     env=env, timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        state = LocalStack(cdir).state()
        pids = list(state["workers"].values()) + [state["api"]["pid"]]
        assert len(state["workers"]) == 3 and all(process_alive(p) for p in pids)
        body = ask_api(api_port, "Who designed the Eiffel Tower?")
        # only the Eiffel passage shares a word with the question, so it is the one read
        assert body["passage"]["title"] == "Eiffel Tower"
        assert body["passages_read"] == [passage_id("eiffel", 0)]
        assert body["answer"] and body["answer"] in body["passage"]["text"]
        again = run_cli("up", "--port-base", str(base), "--api-port", str(api_port),
                        "--model", str(tiny_artifact), env=env, timeout=120)
        assert again.returncode == 0
        assert LocalStack(cdir).state()["workers"] == state["workers"]  # nothing restarted
        ask = run_cli("ask", "Who designed the Eiffel Tower?", "--json", env=env)
        assert ask.returncode == 0 and json.loads(ask.stdout)["cached"] is True
        status = run_cli("status", "--json", env=env)
        assert status.returncode == 0
        assert sum(p["passages"] for p in json.loads(status.stdout)["partitions"]) == 2
    finally:
        down = run_cli("down", "--purge", env=env)
    assert down.returncode == 0, down.stderr
    assert not any(process_alive(p) for p in pids)
    assert not port_in_use(api_port) and not any(port_in_use(base + i) for i in range(3))


@pytest.mark.slow
def test_up_with_its_defaults_answers_with_the_bundled_reader(tmp_path):
    """``shardqa up`` as the README runs it: no --model (the bundled reader, exported on first
    use), default masters and threads; only the ports are free ones, beside other clusters."""
    env = {"SHARDQA_DIR": str(tmp_path / "stack"),
           "SHARDQA_ARTIFACTS": str(tmp_path / "artifacts")}  # a fresh export, not a cache
    base, api_port = free_port_base(3), free_port_base(1)
    pids: list[int] = []
    try:
        up = run_cli("up", "--port-base", str(base), "--api-port", str(api_port),
                     "--corpus", str(write_corpus(tmp_path / "corpus.jsonl")),
                     env=env, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        state = LocalStack(tmp_path / "stack").state()
        pids = list(state["workers"].values()) + [state["api"]["pid"]]
        assert len(state["workers"]) == 3
        for question, expected in [("Who designed the Eiffel Tower?", "Gustave Eiffel"),
                                   ("When was the Eiffel Tower built?", "1887 to 1889"),
                                   ("What is the only natural satellite of Earth?", "Moon")]:
            body = ask_api(api_port, question)
            assert expected in body["answer"], (question, body)
        client = connect(Target(directory=str(tmp_path / "stack")))
        try:
            current = [r["name"] for r in store.list_models(client) if r.get("current_on")]
        finally:
            client.close()
        assert current and set(current) == {"minilm-squad"}
    finally:
        down = run_cli("down", "--purge", env=env)
    assert down.returncode == 0, down.stderr
    assert pids and not any(process_alive(p) for p in pids)
    assert not port_in_use(api_port) and not any(port_in_use(base + i) for i in range(3))
