"""Issue 5: `shardqa up` starts cluster, workers and API in the background; `down` stops them."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

from cluster.local import port_in_use, process_alive
from shardqa.stack import LocalStack
from tests.conftest import free_port_base, run_cli


def test_up_ask_down(tmp_path, tiny_artifact):
    cdir = tmp_path / "stack"
    base = free_port_base(3)
    api_port = free_port_base(1)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(d) for d in [
        {"id": "eiffel", "title": "Eiffel Tower", "text": "The Eiffel Tower was designed by "
         "the company of Gustave Eiffel and built from 1887 to 1889."},
        {"id": "moon", "title": "Moon", "text": "The Moon is the only natural satellite of "
         "Earth."},
    ]) + "\n")
    env = {"SHARDQA_DIR": str(cdir)}
    try:
        up = run_cli("up", "--port-base", str(base), "--api-port", str(api_port),
                     "--model", str(tiny_artifact), "--threads", "1", "--corpus", str(corpus),
                     env=env, timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        state = LocalStack(cdir).state()
        pids = list(state["workers"].values()) + [state["api"]["pid"]]
        assert len(state["workers"]) == 3 and all(process_alive(p) for p in pids)
        url = f"http://127.0.0.1:{api_port}/qa?" + urllib.parse.urlencode(
            {"q": "Who designed the Eiffel Tower?"})
        with urllib.request.urlopen(url, timeout=60) as resp:
            body = json.loads(resp.read())
        assert body["answer"] and body["passage"]["title"] in ("Eiffel Tower", "Moon")
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
