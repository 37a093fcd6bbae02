"""Issue 8: least privilege on a real secured cluster (the session cluster is one): ACL users,
passwords on disk, what each user can and cannot do, connecting by URL, the API's bearer
token, body limit and rate limit, and model integrity (sha256 before torch sees a byte)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.app import create_app
from cluster import acl, capabilities, keys
from cluster.connection import Target, connect
from cluster.errors import ClusterError
from cluster.local import packaged_redis_server
from gears import health
from gears.asker import Asker
from models import store
from tests.conftest import free_port_base, run_cli
from tests.corpus import QUESTIONS


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def node_addresses(handle) -> list[tuple[str, int]]:
    spec = handle.local.spec()
    return [(spec.host, n.port) for n in spec.nodes]


def model_keys(client) -> list[str]:
    """The current model's pointer, meta and first chunk under one master's tag."""
    tag = next(iter(store.master_tags(client).values()))
    pointer = json.loads(client.get(keys.model_current(tag)))
    return [keys.model_current(tag), keys.model_meta(tag, pointer["name"], pointer["version"]),
            keys.model_chunk(tag, pointer["name"], pointer["version"], 0)]


def refused(call) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_passwords_on_disk_are_private_and_default_user_is_off(redis_cluster):
    folder = redis_cluster.local.dir
    assert mode(folder / acl.USERS_FILE) == 0o600
    assert mode(folder) == 0o700
    users = acl.load(folder)
    assert set(users) == set(acl.ROLES) == {"admin", "worker", "api", "reader", "sync"}
    assert len(set(users.values())) == 5
    for node_dir in folder.glob("node-*"):
        assert mode(node_dir / "users.acl") == 0o600
        assert mode(node_dir / "redis.conf") == 0o600
        for password in users.values():  # nodes keep hashes only
            assert password not in (node_dir / "users.acl").read_text()
    once = Retry(NoBackoff(), 0)  # a refusal is final: don't retry it
    for host, port in node_addresses(redis_cluster):
        anonymous = redis.Redis(host=host, port=port, protocol=2, retry=once)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        for user, password in (("default", "x"), ("api", "wrong")):
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(host=host, port=port, username=user, password=password,
                            retry=once).ping()


def test_api_user_can_ask_and_nothing_more(shared_pipeline, redis_cluster):
    api = redis_cluster.client_as("api")
    answer = Asker(api, timeout_s=20).ask(QUESTIONS[0], use_cache=False)
    assert answer.answer and answer.passage_text  # rank, route, wait, read text, cache
    node = api.get_redis_connection(api.get_primaries()[0])
    assert refused(lambda: node.flushall())
    assert refused(lambda: node.config_set("maxmemory", "1"))
    assert refused(lambda: node.keys("*"))
    assert refused(lambda: node.acl_setuser("evil"))
    admin = redis_cluster.client()
    for key in model_keys(admin):  # it reads the models (the question encoder), only
        assert (api.get(key) if "current" in key or "chunk" in key else api.hgetall(key))
        assert refused(lambda key=key: api.delete(key))
        assert refused(lambda key=key: api.set(key, "forged"))
    assert refused(lambda: api.set(keys.partition_map(), "{}"))
    tag = next(iter(store.master_tags(admin).values()))
    assert refused(lambda: api.hset(keys.passage(tag, "x.0"), "text", "forged"))
    assert refused(lambda: api.xadd(keys.ingest_stream(tag), {"op": "del", "pid": "x.0"}))
    # what the ask path needs beyond that: a capped rank (ZCARD, ZMSCORE inside the function)
    # and the retry rule's look at request streams and heartbeats
    term = keys.index_term(tag, "zz-acl-probe")
    admin.zadd(term, {"x.0": 3, "x.1": 2, "x.2": 1})
    try:
        ranked = api.fcall_ro("rank", 2, keys.index_lengths(tag), term, 5, 1.2, 0.75, 10, 1, 1.0)
        assert [pid.decode() for pid in ranked[::2]] == ["x.0"]
    finally:
        admin.delete(term)
    api.xrange(keys.request_stream(tag), "-", "+", count=1)
    assert health.served_partitions(api)


def test_api_user_may_only_add_to_request_streams(shared_pipeline, redis_cluster):
    """Issue 14: as ``api``, DEL of a request stream stalled its worker's partitions."""
    api = redis_cluster.client_as("api")
    admin = redis_cluster.client()
    tag = next(iter(store.master_tags(admin).values()))
    stream = keys.request_stream(tag)
    before = admin.xlen(stream)
    assert refused(lambda: api.delete(stream))
    assert refused(lambda: api.set(stream, "x"))
    assert refused(lambda: api.expire(stream, 1))
    assert refused(lambda: api.execute_command("UNLINK", stream))
    assert refused(lambda: api.xtrim(stream, maxlen=0))
    assert admin.type(stream) == b"stream" and admin.ttl(stream) == -1
    # XADD works (what the asker sends): a probe entry for no partition, removed again
    entry = api.xadd(stream, {"probe": "acl"}, maxlen=100_000, approximate=True)
    assert admin.xlen(stream) >= before
    admin.xdel(stream, entry)


def test_worker_user_cannot_change_acls_or_models(shared_pipeline, redis_cluster):
    worker = redis_cluster.client_as("worker")
    node = worker.get_redis_connection(worker.get_primaries()[0])
    assert refused(lambda: node.acl_setuser("evil", enabled=True, commands=["+@all"]))
    assert refused(lambda: node.execute_command("ACL", "DELUSER", "api"))
    assert refused(lambda: node.config_set("appendonly", "no"))
    assert refused(lambda: node.flushall())
    assert refused(lambda: node.function_load("#!lua name=evil\n", replace=True))
    admin = redis_cluster.client()
    current, meta, chunk = model_keys(admin)
    assert worker.get(chunk)  # it loads the model...
    assert refused(lambda: worker.set(chunk, b"tampered"))  # ...but cannot change it
    assert refused(lambda: worker.hset(meta, "sha256", "0" * 64))
    assert refused(lambda: worker.set(current, "{}"))
    assert refused(lambda: worker.set(keys.partition_map(), "{}"))


def test_worker_user_cannot_list_key_names_or_forge_events(shared_pipeline, redis_cluster):
    worker = redis_cluster.client_as("worker")
    node = worker.get_redis_connection(worker.get_primaries()[0])
    assert refused(lambda: node.scan(0, count=10))
    assert refused(lambda: node.randomkey())
    assert refused(lambda: node.publish("__keyevent@0__:xadd", "sq:{p0.0}:requests"))
    assert refused(lambda: node.publish("__keyevent@0__:keymiss", "sq:qa:forged"))
    node.publish(keys.generation_channel(), "0")  # what it needs: announce a new generation
def test_vector_sets_worker_writes_api_only_searches(redis_cluster):
    """Redis 8 (the embedded default): the worker may VADD/VREM/... a partition's vector set,
    the api user may only VSIM it."""
    admin = redis_cluster.client()
    assert capabilities.vector_sets(admin)
    tag = next(iter(store.master_tags(admin).values()))
    key = keys.vectors(tag)
    worker, api = redis_cluster.client_as("worker"), redis_cluster.client_as("api")
    blob = np.array([1, 0, 0, 0], dtype=np.float32).tobytes()
    try:
        assert worker.execute_command("VADD", key, "FP32", blob, "x.0", "Q8") == 1
        assert worker.execute_command("VADD", key, "FP32", blob, "x.1", "Q8") == 1
        assert worker.execute_command("VCARD", key) == 2
        assert worker.execute_command("VINFO", key)
        assert len(worker.execute_command("VEMB", key, "x.0")) == 4
        assert worker.execute_command("VSETATTR", key, "x.0", '{"doc": "x"}') == 1
        assert worker.execute_command("VGETATTR", key, "x.0")
        assert worker.execute_command("VREM", key, "x.1") == 1
        found = api.execute_command("VSIM", key, "FP32", blob, "WITHSCORES", "COUNT", 3)
        assert list(found) == [b"x.0"]
        # what the README gives redis-cli (--user api): passages similar to a passage
        assert api.execute_command("VSIM", key, "ELE", "x.0") == [b"x.0"]
        assert refused(lambda: api.execute_command("VADD", key, "FP32", blob, "x.2"))
        assert refused(lambda: api.execute_command("VREM", key, "x.0"))
        assert refused(lambda: api.execute_command("VEMB", key, "x.0"))
        assert refused(lambda: api.delete(key))
        assert refused(lambda: worker.execute_command(
            "VADD", keys.model_current(tag), "FP32", blob, "x.0"))  # only its own keys
    finally:
        admin.delete(key)


@pytest.mark.parametrize("binary", ["packaged", "path"])
def test_aclfile_loads_on_redis_8_and_older_servers(binary, tmp_path):
    """The users' rules name vector-set commands only for a server that has them: an older
    server refuses an aclfile naming commands it does not know, and would not start."""
    server = packaged_redis_server() if binary == "packaged" else shutil.which("redis-server")
    if not server:
        pytest.skip(f"no {binary} redis-server on this machine")
    passwords = acl.generate()
    (tmp_path / "users.acl").write_text(
        acl.aclfile(passwords, vector_sets=capabilities.binary_has_vector_sets(server)))
    port = free_port_base(1)
    proc = subprocess.Popen([server, "--port", str(port), "--save", "", "--dir", str(tmp_path),
                             "--aclfile", str(tmp_path / "users.acl")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn = redis.Redis(port=port, username="api", password=passwords["api"],
                           retry=Retry(NoBackoff(), 50), socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert conn.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "did not start"
                time.sleep(0.05)
        # the binary's version and the live probe (which the api user may run) agree
        has = capabilities.binary_has_vector_sets(server)
        assert capabilities.node_has_vector_sets(conn) == has
        assert ("+vsim" in acl.aclfile(passwords, vector_sets=has)) == has
    finally:
        proc.terminate()
        proc.wait()


def test_connect_by_url_and_environment(shared_pipeline, redis_cluster, monkeypatch):
    host, port = node_addresses(redis_cluster)[0]
    password = acl.load(redis_cluster.local.dir)["api"]
    url = f"redis://api:{quote(password, safe='')}@{host}:{port}"
    client = connect(Target(url=url))
    assert Asker(client, timeout_s=20).ask(QUESTIONS[1]).answer
    monkeypatch.setenv("SHARDQA_REDIS_USER", "api")
    monkeypatch.setenv("SHARDQA_REDIS_PASSWORD", password)
    assert connect(Target(url=f"redis://{host}:{port}")).get(keys.generation()) is not None
    monkeypatch.setenv("SHARDQA_REDIS_PASSWORD", "wrong")
    with pytest.raises(ClusterError, match="refused user 'api'|cannot reach"):
        connect(Target(url=f"redis://{host}:{port}"))
    monkeypatch.delenv("SHARDQA_REDIS_USER")
    monkeypatch.delenv("SHARDQA_REDIS_PASSWORD")
    proc = run_cli("ask", QUESTIONS[1], "--json", "--redis", url, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["answer"]
    bad = run_cli("ask", QUESTIONS[1], "--redis", f"redis://api:nope@{host}:{port}",
                  timeout=120)
    assert bad.returncode != 0
    assert bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_api_token_body_limit_and_rate_limit(shared_pipeline, redis_cluster):
    asker = Asker(redis_cluster.client_as("api"), timeout_s=20)
    app = create_app(asker, token="s3cret", rate_limit=3).test_client()
    q = {"q": QUESTIONS[2]}
    assert app.get("/qa", query_string=q).status_code == 401
    bad = app.get("/qa", query_string=q, headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401 and bad.json["error"]["status"] == 401
    auth = {"Authorization": "Bearer s3cret"}
    ok = app.get("/qa", query_string=q, headers=auth)
    assert ok.status_code == 200 and ok.json["answer"]
    assert app.get("/openapi.json").status_code == 200  # public
    huge = app.post("/qa", data=json.dumps({"question": "x" * 40000}),
                    content_type="application/json", headers=auth)
    assert huge.status_code == 413 and "error" in huge.json
    statuses = [app.get("/qa", query_string=q, headers=auth).status_code for _ in range(6)]
    assert 429 in statuses
    other = create_app(asker, token="s3cret", rate_limit=3).test_client()
    limited = other.get("/qa", query_string=q, headers=auth,
                        environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert limited.status_code == 200  # per client address


def test_wrong_tokens_are_throttled_per_address(shared_pipeline, redis_cluster):
    """Issue 14: wrong-token attempts were never throttled."""
    from api.app import WRONG_TOKENS_PER_MINUTE

    asker = Asker(redis_cluster.client_as("api"), timeout_s=20)
    app = create_app(asker, token="s3cret").test_client()
    q = {"q": QUESTIONS[2]}
    attacker = {"REMOTE_ADDR": "10.0.0.66"}
    for _ in range(WRONG_TOKENS_PER_MINUTE):
        assert app.get("/qa", query_string=q, headers={"Authorization": "Bearer guess"},
                       environ_base=attacker).status_code == 401
    refused_now = app.get("/qa", query_string=q, headers={"Authorization": "Bearer guess"},
                          environ_base=attacker)
    assert refused_now.status_code == 429 and "wrong bearer tokens" in refused_now.json[
        "error"]["message"]
    right = {"Authorization": "Bearer s3cret"}  # not even the right one is tried from there
    assert app.get("/qa", query_string=q, headers=right, environ_base=attacker
                   ).status_code == 429
    assert app.get("/qa", query_string=q, headers=right,
                   environ_base={"REMOTE_ADDR": "10.0.0.7"}).status_code == 200


def test_rate_limiter_forgets_idle_clients():
    """Issue 14: one deque per address ever seen, never freed."""
    from api.app import RateLimiter

    now = [100.0]
    limiter = RateLimiter(2, window_s=1.0, clock=lambda: now[0])
    assert all(limiter.allow(f"10.1.{i // 256}.{i % 256}") for i in range(5000))
    assert len(limiter) == 5000
    assert limiter.allow("10.9.9.9") and limiter.allow("10.9.9.9")
    assert not limiter.allow("10.9.9.9") and limiter.exceeded("10.9.9.9")
    now[0] += 2.5  # every client idle for more than a window
    assert limiter.allow("10.9.9.9")
    assert len(limiter) == 1


def test_cached_answers_and_health_never_wait_for_uncached_reads(shared_pipeline,
                                                                redis_cluster):
    """Issue 14: with every uncached slot taken, a cached answer and /health still answer,
    and one more uncached question gets 503 at once instead of queueing."""
    asker = Asker(redis_cluster.client_as("api"), timeout_s=20)
    flask_app = create_app(asker, max_uncached=2)
    app = flask_app.test_client()
    warm = app.get("/qa", query_string={"q": QUESTIONS[3]})
    assert warm.status_code == 200
    slots = flask_app.extensions["shardqa_uncached"]
    assert slots.acquire(blocking=False) and slots.acquire(blocking=False)  # all taken
    try:
        hit = app.get("/qa", query_string={"q": QUESTIONS[3]})
        assert hit.status_code == 200 and hit.json["cached"] is True
        assert hit.json["answer"] == warm.json["answer"]
        assert app.get("/health").status_code == 200
        busy = app.get("/qa", query_string={"q": QUESTIONS[4] + " (uncached)"})
        assert busy.status_code == 503 and "busy" in busy.json["error"]["message"]
    finally:
        slots.release()
        slots.release()
    assert app.get("/qa", query_string={"q": QUESTIONS[4] + " (uncached)"}).status_code == 200


def test_malformed_answer_cache_entry_is_a_miss_and_is_overwritten(shared_pipeline,
                                                                  redis_cluster):
    """Issue 14: a cache value that does not parse gave 500 for an hour."""
    from gears.asker import cache_form

    asker = Asker(redis_cluster.client_as("api"), timeout_s=20)
    admin = redis_cluster.client()
    question = QUESTIONS[5]
    cache_key = keys.answer_cache(asker.generation(fresh=True), 5, cache_form(question))
    app = create_app(asker).test_client()
    for garbage in (b"not json", b"[1, 2]", b'{"question": "x"}', b"\xff\xfe"):
        admin.set(cache_key, garbage, ex=3600)
        got = app.get("/qa", query_string={"q": question})
        assert got.status_code == 200 and got.json["cached"] is False and got.json["answer"]
        entry = admin.get(cache_key).split(b"\n")[0]  # the answer's line (Answer.to_cache)
        assert json.loads(entry)["answer"] == got.json["answer"]
        assert app.get("/qa", query_string={"q": question}).json["cached"] is True


def test_health_forgets_long_dead_workers(shared_pipeline, redis_cluster):
    """Issue 14: /health listed dead workers forever (status still shows them)."""
    asker = Asker(redis_cluster.client_as("api"), timeout_s=20)
    admin = redis_cluster.client()
    ghost = json.dumps({"master": "10.0.0.1:7000", "partitions": [], "pid": 1,
                        "time": time.time() - 3600, "model": "x"})
    admin.hset(keys.workers(), "ghost-worker", ghost)
    try:
        body = create_app(asker).test_client().get("/health").json
        assert "ghost-worker" not in [w["id"] for w in body["workers"]]
        assert len(body["workers"]) == 3
        assert "ghost-worker" in [w["id"] for w in health.status(admin)["workers"]]
    finally:
        admin.hdel(keys.workers(), "ghost-worker")


def test_token_file_is_read_and_a_bad_one_is_a_clear_error(tmp_path):
    from api.cli import read_token

    path = tmp_path / "token"
    path.write_text("  s3cret-from-file\n")
    assert read_token(str(path)) == "s3cret-from-file"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for bad, why in ((tmp_path / "missing", "cannot read"), (empty, "is empty")):
        proc = run_cli("serve", "--token-file", str(bad), "--port", "1")
        assert proc.returncode == 2 and proc.stderr.startswith("error: ")
        assert why in proc.stderr and "Traceback" not in proc.stderr


def test_model_loads_only_when_sha256_matches(cluster, tiny_artifact):
    admin = cluster.client()
    store.push(admin, tiny_artifact)
    master = next(iter(store.master_tags(admin)))
    store.clear_cache()
    assert store.load(admin, master, cache=False).meta["name"]
    _, _, chunk = model_keys(admin)
    blob = admin.get(chunk)
    admin.set(chunk, blob[:-1] + bytes([blob[-1] ^ 1]))  # one flipped bit
    with pytest.raises(store.CorruptModel, match="sha256"):
        store.load(admin, master, cache=False)
    worker = cluster.client_as("worker")
    with pytest.raises(store.CorruptModel):  # what the worker does: refuses, loads nothing
        store.load(worker, master, cache=False)

