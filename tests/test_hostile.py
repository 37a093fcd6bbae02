"""Issue 8: hostile input against a real ``shardqa serve`` (API user, secured cluster, real
workers, tiny reader): schemathesis over /openapi.json (positive and negative cases, at least
500 in all: no 5xx, no crash), then hypothesis with the questions a hostile client sends:
control characters, hash-tag braces, very long tokens, non-UTF-8 bytes in query strings and
in bodies. (The ingest parsers' hypothesis tests are in tests/test_loaders.py.)"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote_from_bytes, urlparse

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.conftest import free_port_base

MIN_CASES = 500
HOSTILE = settings(max_examples=60, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def served(shared_pipeline, redis_cluster, tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("hostile")
    port = free_port_base(1)
    log = open(tmp / "api.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardqa.cli", "serve", "--port", str(port), "--dir",
         redis_cluster.target.directory, "--threads", "8", "--timeout", "30"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if raw_request("GET", url, "/health")[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError((tmp / "api.log").read_text()[-3000:])
        time.sleep(0.1)
    try:
        yield url, proc, tmp / "api.log"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def raw_request(method: str, url: str, path: bytes | str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, bytes, str]:
    """One request with exactly these bytes on the wire (urllib would re-encode them)."""
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        conn.putrequest(method, path if isinstance(path, str) else path.decode("latin-1"),
                        skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Content-Type") or ""
    finally:
        conn.close()


def assert_handled(status: int, body: bytes, content_type: str) -> None:
    """A 2xx answer or a 4xx JSON error; never a 5xx, an HTML page or a traceback."""
    assert status < 500, body[:300]
    assert b"Traceback" not in body
    if content_type.startswith("application/json"):
        data = json.loads(body)
        if status >= 400:
            assert data["error"]["status"] == status and data["error"]["message"]
        elif "answer" in data:
            assert isinstance(data["question"], str)


def test_schemathesis_finds_no_server_error(served):
    url, proc, log = served
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    calls = {"n": 0}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        examples = 140 if operation.path == "/qa" else 15
        for mode in GenerationMode:
            if mode is GenerationMode.NEGATIVE and operation.path != "/qa":
                continue  # nothing to get wrong in a request without parameters
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                calls["n"] += 1
                response = case.call(base_url=url, timeout=60)
                if response.status_code >= 500 or b"Traceback" in response.content:
                    failures.append(f"{case.as_curl_command()} -> {response.status_code}")
                assert response.status_code < 500

            run()
    print(f"schemathesis: {calls['n']} generated cases, none answered 5xx")
    assert not failures, failures[:5]
    assert calls["n"] >= MIN_CASES, f"only {calls['n']} generated cases"
    assert proc.poll() is None, "the API process died"
    assert "Traceback" not in log.read_text()


# --- hand-aimed hostile questions ------------------------------------------------------------

control = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.characters(
    min_codepoint=0x7F, max_codepoint=0x9F)
hash_tag = st.sampled_from(list("{}") + ["{sq}", "{p0.0}", "}{", "{{}}", "sq:{sq}:partitions"])
words = st.sampled_from(["Eiffel", "tower", "Everest", "Japan", "capital", "who", "the"])
hostile_question = st.lists(control | hash_tag | words | st.text(max_size=8)
                            | st.text(alphabet="x", min_size=300, max_size=2000),
                            min_size=1, max_size=8).map(" ".join)


@HOSTILE
@given(question=hostile_question)
def test_hostile_questions_in_query_and_body(served, question):
    url, proc, _ = served
    encoded = question.encode("utf-8", "surrogatepass")
    status, body, ctype = raw_request("GET", url, "/qa?q=" + quote_from_bytes(encoded))
    assert_handled(status, body, ctype)
    payload = json.dumps({"question": question}).encode()
    status, body, ctype = raw_request("POST", url, "/qa", payload,
                                      {"Content-Type": "application/json"})
    assert_handled(status, body, ctype)
    if status == 200:  # what the reader saw has no control characters left in it
        assert all(ch.isprintable() for ch in json.loads(body)["question"])
    assert proc.poll() is None


@HOSTILE
@given(raw=st.binary(min_size=1, max_size=3000), prefix=st.sampled_from([b"", b"Eiffel "]))
def test_non_utf8_bytes_in_query_and_body(served, raw, prefix):
    url, proc, _ = served
    status, body, ctype = raw_request("GET", url, b"/qa?q=" + quote_from_bytes(prefix + raw)
                                      .encode() + b"&k=" + quote_from_bytes(raw[:3]).encode())
    assert_handled(status, body, ctype)
    for payload in (raw, b'{"question": "' + prefix + raw + b'"}'):
        status, body, ctype = raw_request("POST", url, "/qa", payload,
                                          {"Content-Type": "application/json"})
        assert_handled(status, body, ctype)
        assert status != 200 or json.loads(body)["question"]
    assert proc.poll() is None


def test_extreme_but_valid_inputs(served):
    url, proc, _ = served
    long_token = "Eiffel" + "x" * 990  # one 996-character token: within the 1000 limit
    for question in (long_token, "{" * 1000, "Who designed the {Eiffel} Tower?\x00\x1b[31m",
                     "\u202eWho designed the Eiffel Tower?", "\ud7ff\ue000\U0010ffff Eiffel"):
        status, body, ctype = raw_request(
            "POST", url, "/qa", json.dumps({"question": question}).encode(),
            {"Content-Type": "application/json"})
        assert status in (200, 400), body[:300]
        assert_handled(status, body, ctype)
    too_long = "x" * 1001
    status, body, _ = raw_request("GET", url, "/qa?q=" + too_long)
    assert status == 400 and b"longer than" in body
    status, body, ctype = raw_request("POST", url, "/qa", b"x" * 100_000,
                                      {"Content-Type": "application/json"})
    assert status == 413 and json.loads(body)["error"]["status"] == 413
    assert proc.poll() is None


def test_burst_of_one_new_question_is_read_once(served, redis_cluster):
    """A burst of the same uncached question: the shards read it once, all get the answer."""
    from concurrent.futures import ThreadPoolExecutor

    from gears.asker import Asker

    asker = Asker(redis_cluster.client_as("api"), timeout_s=20)
    sends = []
    send = asker._send
    asker._send = lambda *a, **kw: (sends.append(1), send(*a, **kw))[1]
    question = f"Who designed the Eiffel Tower, burst {time.time_ns()}?"
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: asker.ask(question), range(12)))
    assert len({(a.answer, a.passage_id, a.start) for a in answers}) == 1
    assert 1 <= len(sends) <= 2  # one send (plus at most the one retry), not twelve


def test_json_nested_5000_levels_is_a_400(served):
    """Issue 14: the parser's RecursionError was a 500."""
    url, proc, _ = served
    for body in (b"[" * 5000 + b"]" * 5000,
                 b'{"question": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                 b'{"a":' * 2500 + b"1" + b"}" * 2500):  # under the 16 KiB body cap
        status, raw, ctype = raw_request("POST", url, "/qa", body,
                                         {"Content-Type": "application/json"})
        assert status == 400, raw[:300]
        assert_handled(status, raw, ctype)
    assert proc.poll() is None
