"""Issue 8: faults against real processes: a master killed (failover to its replica), a
worker killed mid-batch (ingest and questions), the whole cluster stopped and restarted.

Every test asserts behaviour (right answers, nothing lost, consistent index), never time;
the waits are bounded so that a broken recovery fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis

from cluster import keys, partitions
from cluster.cli import bring_up
from cluster.connection import Target, connect
from cluster.local import LocalCluster
from cluster.waiting import until
from gears import index
from gears.asker import Asker, NoReply
from loaders.documents import Document
from loaders.writer import ingest, wait_indexed
from tests.conftest import (
    WorkerPool,
    free_port_base,
    run_cli,
    start_cluster,
    start_pipeline,
)
from tests.corpus import CORPUS, QUESTIONS

#: what a client may see while a master is down and its replica takes over
OUTAGE = (NoReply, redis.RedisError, redis.exceptions.RedisClusterException)


def bulk_corpus(count: int, prefix: str = "bulk") -> list[Document]:
    """Documents with overlapping vocabularies, so postings and df span many passages."""
    words = ["alpine", "basalt", "cobalt", "delta", "ember", "fjord", "glacier", "harbor",
             "island", "jungle", "karst", "lagoon", "mesa", "nebula", "oasis", "prairie"]
    docs = []
    for i in range(count):
        body = " ".join(f"{words[(i * 7 + j) % len(words)]} {words[(i + j * 3) % len(words)]}"
                        for j in range(12))
        docs.append(Document(f"{prefix}-{i}", f"Record {i} mentions {body}.",
                             title=f"{prefix} {i % 9}"))
    return docs


def expected_passages(client, docs: list[Document]) -> dict[str, str]:
    """pid -> partition tag for every passage the documents should have stored."""
    pmap = partitions.load(client)
    out = {}
    for doc in docs:
        p = pmap.for_doc(doc.doc_id)
        count = int(client.hget(keys.doc(p.tag, partitions.doc_key(doc.doc_id)), "passages"))
        for position in range(count):
            out[partitions.passage_id(doc.doc_id, position)] = p.tag
    return out


def assert_index_consistent(client, pids: dict[str, str]) -> None:
    """Each partition's index is exactly what indexing its passages once gives: no passage
    lost, none counted twice (lengths, n, total, df and postings all agree)."""
    by_tag: dict[str, list[str]] = {}
    for pid, tag in pids.items():
        by_tag.setdefault(tag, []).append(pid)
    for tag, tag_pids in by_tag.items():
        lengths = {k.decode(): int(v) for k, v in client.hgetall(keys.index_lengths(tag)).items()}
        assert set(tag_pids) <= set(lengths), f"{tag}: passages missing from the index"
        terms: dict[str, Counter] = {}
        for pid in lengths:
            title, text = client.hmget(keys.passage(tag, pid), ["title", "text"])
            assert text is not None, f"{pid}: indexed but its passage is gone"
            terms[pid] = index.passage_terms((title or b"").decode(), text.decode())
            assert lengths[pid] == sum(terms[pid].values())
            stored = json.loads(client.get(keys.index_doc_terms(tag, pid)))
            assert Counter(stored) == terms[pid]
        stats = client.hgetall(keys.index_stats(tag))
        assert int(stats[b"n"]) == len(lengths)
        assert int(stats[b"total"]) == sum(lengths.values())
        df = Counter()
        for tf in terms.values():
            df.update(tf.keys())
        stored_df = {k.decode(): int(v) for k, v in client.hgetall(keys.index_df(tag)).items()
                     if int(v)}
        assert stored_df == dict(df), f"{tag}: document frequencies counted twice or lost"
        for term in df:
            postings = dict(client.zrange(keys.index_term(tag, term), 0, -1, withscores=True))
            assert {k.decode(): int(v) for k, v in postings.items()} == {
                pid: tf[term] for pid, tf in terms.items() if term in tf}


def reference_answers(asker: Asker) -> dict[str, tuple]:
    return {q: key(asker.ask(q, use_cache=False)) for q in QUESTIONS}


def key(answer) -> tuple:
    return (answer.answer, answer.passage_id, answer.start, answer.end)


def wait_until(predicate, timeout: float, message: str, poll: float = 0.1):
    """``predicate()`` until true (an outage counts as "not yet"); else the test fails."""
    return until(predicate, timeout, poll, what=message, retry_on=OUTAGE, error=AssertionError)


def get_json(url: str, timeout: float = 20) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def start_api(directory: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port_base(1)
    log = open(tmp / "api.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardqa.cli", "serve", "--port", str(port), "--dir", directory,
         "--threads", "8", "--timeout", "6"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return get_json(url + "/openapi.json", timeout=2)[0] == 200
        except OSError:
            return False

    wait_until(up, 60, f"API did not start: {(tmp / 'api.log').read_text()[-2000:]}")
    return proc, url


@pytest.fixture
def replicated(tmp_path, tiny_artifact):
    """Its own secured cluster: 3 masters, 1 replica each, node timeout 2 s; workers; corpus."""
    handle = start_cluster(tmp_path, replicas=1, node_timeout=2000)
    pool = WorkerPool(handle, tmp_path)
    try:
        client = start_pipeline(handle, pool, tiny_artifact)
        yield handle, pool, client
    finally:
        pool.stop_all()
        handle.local.down(purge=True)


class _AskLoop:
    """Threads that ask every question over and over (uncached), recording each
    (question, answer key) or (question, outage exception)."""

    def __init__(self, asker: Asker, threads: int = 2) -> None:
        self.asker = asker
        self.seen: list[tuple[str, object]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            q = QUESTIONS[i % len(QUESTIONS)]
            i += 1
            try:
                self.seen.append((q, key(self.asker.ask(q, use_cache=False))))
            except OUTAGE as exc:
                self.seen.append((q, exc))
                time.sleep(0.05)


def _kill_and_fail_over(handle, api_client, url: str, victim, replica_addr: str,
                        loop: _AskLoop) -> None:
    """SIGKILL the victim master while the loop asks; its replica is promoted and the API
    answers every question again, then the loop answers some more."""
    seen = loop.seen
    wait_until(lambda: len(seen) >= 6, 30, "no questions answered before the kill")
    os.kill(handle.local.pid_of(victim), signal.SIGKILL)

    def promoted():
        table = partitions.slot_table(api_client)
        return any(v["primary"] == replica_addr for v in table.values())

    wait_until(promoted, 15, "the replica was not promoted")

    def api_answers_all():
        return all(get_json(f"{url}/qa?q={urllib.parse.quote(q)}", timeout=10)[0] == 200
                   for q in QUESTIONS)

    wait_until(api_answers_all, 15, "the API did not recover within 15 s of the failover",
               poll=0.5)
    after_recovery = len(seen)
    wait_until(lambda: len(seen) >= after_recovery + 6, 30, "asks stopped after failover")


def _beats(api_client) -> list[dict]:
    return [json.loads(v) for v in api_client.hgetall(keys.workers()).values()]


def _rejoin(handle, pool, api_client, victim_addr: str, replica_addr: str) -> None:
    """The killed node comes back as a replica of the promoted one; the worker stays there."""
    bring_up(handle.local)

    def rejoined():
        table = partitions.slot_table(api_client)
        return any(v["primary"] == replica_addr and victim_addr in v["replicas"]
                   for v in table.values())

    wait_until(rejoined, 30, "the old master did not rejoin as a replica")
    pool.wait_ready()


def test_master_killed_replica_takes_over(replicated, tmp_path):
    handle, pool, client = replicated
    extra = bulk_corpus(60)
    ingest(client, extra, progress=False)  # acknowledged after WAIT 1 on every batch
    wait_indexed(client, timeout=60, progress=False)
    stored = expected_passages(client, CORPUS + extra)
    api_client = handle.client()  # admin, for the checks; the asker below is the API user
    asker = Asker(handle.client_as("api"), timeout_s=6)
    want = reference_answers(asker)
    assert all(a for a, *_ in want.values())
    spec = handle.local.spec()
    victim = next(n for n in spec.nodes if n.role == "master")
    victim_addr = f"{spec.host}:{victim.port}"
    replica_addr = next(f"{spec.host}:{n.port}" for n in spec.nodes
                        if n.master_port == victim.port)
    loop = _AskLoop(asker)
    api, url = start_api(handle.target.directory, tmp_path)
    try:
        loop.start()
        _kill_and_fail_over(handle, api_client, url, victim, replica_addr, loop)
        loop.join()
    finally:
        loop.stop.set()
        api.terminate()
        api.wait(timeout=10)

    seen = loop.seen
    answers = [(q, got) for q, got in seen if not isinstance(got, BaseException)]
    assert answers and all(got == want[q] for q, got in answers), "a wrong answer"
    # the recovered tail answers everything (the loop's last answers are all good)
    assert not isinstance(seen[-1][1], BaseException)

    # the worker beside the dead master followed its shard to the promoted replica
    def following() -> bool:  # heartbeats are written every second
        return any(b["master"] == victim_addr and b.get("serving") == replica_addr
                   and b["partitions"] for b in _beats(api_client))

    wait_until(following, 15, "the worker beside the dead master did not follow its shard")
    # nothing ingested before the kill is lost, and the index on the new master is whole
    assert_index_consistent(api_client, stored)
    for q in QUESTIONS:
        assert key(asker.ask(q, use_cache=False)) == want[q]
    _rejoin(handle, pool, api_client, victim_addr, replica_addr)
    for q in QUESTIONS:
        assert key(asker.ask(q, use_cache=False)) == want[q]
    assert any(b["master"] == victim_addr and b.get("serving") == replica_addr
               for b in _beats(api_client))


def test_cli_up_with_replicas_is_secured_and_replicated(tmp_path):
    env = {"SHARDQA_DIR": str(tmp_path / "c")}
    base = free_port_base(6)
    up = run_cli("cluster", "up", "--replicas", "1", "--node-timeout", "2000",
                 "--port-base", str(base), env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert "ACL users admin, worker, api" in up.stdout and "users.json" in up.stdout
        status = run_cli("cluster", "status", env=env, check=True)
        assert status.stdout.count("replica") == 3
        handle_target = Target(directory=env["SHARDQA_DIR"])
        client = connect(handle_target)
        table = partitions.slot_table(client)
        assert len(table) == 3 and all(len(v["replicas"]) == 1 for v in table.values())
        spec = LocalCluster(env["SHARDQA_DIR"]).spec()
        assert spec.replicas == 1 and spec.node_timeout_ms == 2000
        client.close()
    finally:
        run_cli("cluster", "down", "--purge", env=env)


def test_worker_killed_mid_ingest_loses_nothing_and_counts_nothing_twice(pipeline, workers,
                                                                         cluster):
    client = pipeline
    victim = cluster.masters[0]
    docs = bulk_corpus(400)
    done = threading.Event()

    def load():
        try:
            ingest(client, docs, batch_size=50, progress=False)
        finally:
            done.set()

    loader = threading.Thread(target=load)
    loader.start()
    heard = {}

    def victim_busy():
        for raw in client.hgetall(keys.workers()).values():
            beat = json.loads(raw)
            if beat["master"] == victim:
                heard["ingested"] = beat["ingested"]
        return heard.get("ingested", 0) > 0

    wait_until(victim_busy, 60, "the victim never started indexing", poll=0.02)
    workers.kill(victim, signal.SIGKILL)  # mid-stream: entries read but not acknowledged
    loader.join(timeout=60)
    assert done.is_set()
    workers.start(victim)  # re-reads its own pending entries
    workers.wait_ready()
    wait_indexed(client, timeout=60, progress=False)
    assert_index_consistent(client, expected_passages(client, CORPUS + docs))
    asker = Asker(client, timeout_s=10)
    assert all(asker.ask(q, use_cache=False).answer for q in QUESTIONS)


def test_worker_killed_mid_questions_answers_stay_the_same(pipeline, workers, cluster):
    client = pipeline
    asker = Asker(client, timeout_s=6)
    want = reference_answers(asker)
    victim = cluster.masters[1]
    results: list = []

    def ask(q):
        try:
            results.append((q, key(asker.ask(q, use_cache=False))))
        except NoReply as exc:
            results.append((q, exc))

    threads = [threading.Thread(target=ask, args=(q,)) for q in QUESTIONS * 3]
    for t in threads:
        t.start()
    workers.kill(victim, signal.SIGKILL)
    workers.start(victim)
    for t in threads:
        t.join(timeout=40)
    assert not any(t.is_alive() for t in threads)
    workers.wait_ready()
    answered = [(q, got) for q, got in results if not isinstance(got, NoReply)]
    assert all(got == want[q] for q, got in answered)
    for q in QUESTIONS:
        assert key(asker.ask(q, use_cache=False)) == want[q]
    pmap = partitions.load(client)

    def drained():
        return all(client.xlen(keys.request_stream(p.tag)) == 0 for p in pmap)

    wait_until(drained, 30, "requests left on the streams after recovery")


def test_whole_cluster_restart_keeps_everything_and_workers_reconnect(tmp_path, tiny_artifact):
    handle = start_cluster(tmp_path)
    pool = WorkerPool(handle, tmp_path)
    try:
        client = start_pipeline(handle, pool, tiny_artifact)
        asker = Asker(client, timeout_s=10)
        want = reference_answers(asker)
        cached = asker.ask(QUESTIONS[0])  # written to the cache
        stored = expected_passages(client, CORPUS)
        assert_index_consistent(client, stored)
        pids = {p: proc.pid for p, proc in pool.procs.items()}
        time.sleep(1.2)  # appendfsync everysec: let the last second reach the AOF
        client.close()
        handle.local.down()
        assert not handle.local.running_nodes()
        assert all(proc.poll() is None for proc in pool.procs.values()), "a worker died"
        bring_up(handle.local)
        client = handle.client()
        assert_index_consistent(client, stored)
        asker = Asker(client, timeout_s=10)
        again = asker.ask(QUESTIONS[0])
        assert again.cached and key(again) == key(cached)
        pool.wait_ready(timeout=60)  # the same processes, reconnected, model reloaded
        assert {p: proc.pid for p, proc in pool.procs.items()} == pids
        for q in QUESTIONS:
            assert key(asker.ask(q, use_cache=False)) == want[q]
    finally:
        pool.stop_all()
        handle.local.down(purge=True)


def test_same_length_corrupt_model_copy_is_listed_and_repaired(cluster, tiny_artifact):
    """Issue 14: ``SETRANGE chunk 5000 X`` keeps the length; sync and push used to compare
    lengths only and said "nothing to do"."""
    from models import store

    client = cluster.client()
    meta = store.push(client, tiny_artifact, chunk_size=200_000)
    original = (tiny_artifact / "reader.pt").read_bytes()
    bad = cluster.masters[0]
    chunk = keys.model_chunk(store.tag_for(client, bad), meta["name"], meta["version"], 0)
    size = client.strlen(chunk)
    client.setrange(chunk, 5000, b"X")
    assert client.strlen(chunk) == size
    env = {"SHARDQA_DIR": str(cluster.local.dir)}
    listed = run_cli("model", "list", env=env, check=True)
    assert f"on {bad} fails its sha256 check" in listed.stdout
    assert [r["corrupt_on"] for r in store.list_models(client)] == [[bad]]
    synced = run_cli("model", "sync", env=env, check=True)
    assert f"repaired {bad}" in synced.stdout
    assert store.read_blob(client, bad, fallback=False)[1] == original
    assert [r["corrupt_on"] for r in store.list_models(client)] == [[]]
    assert "fails its sha256" not in run_cli("model", "list", env=env, check=True).stdout
    client.setrange(chunk, 5000, b"Y")  # push repairs it too
    assert store.push(client, tiny_artifact, chunk_size=200_000)["written"] == [bad]
    assert store.read_blob(client, bad, fallback=False)[1] == original
    assert store.sync(client) == []


def test_partitions_without_a_live_worker_fail_fast_or_are_named(pipeline, workers, cluster):
    """Issue 14: each question waiting on a dead worker held an API thread for the whole
    timeout. Now candidates in partitions no live worker reads are left out: the answer
    comes from the live ones and names the missing partitions (and is not cached), or, when
    none of the candidates is live, the ask fails at once naming them. Nothing is sent to a
    dead partition (its request stream does not grow)."""
    from gears import health, ranking
    from gears.asker import NoLiveWorker, cache_form

    client = pipeline
    asker = Asker(client, timeout_s=30, min_rank_ratio=0)  # read all k: more partitions
    probes = QUESTIONS + [f"{a} {b}" for i, a in enumerate(QUESTIONS) for b in QUESTIONS[i + 1:]]
    want = {q: key(asker.ask(q, use_cache=False)) for q in probes}
    pmap = partitions.load(client)
    owners = partitions.owners(client, pmap)

    def candidates(q: str) -> set[int]:
        return {r.partition for r in ranking.above_floor(
            ranking.rank(client, pmap, q, 5, cap=asker.rank_cap), asker.min_rank_ratio)}

    # the victim: a master holding some, not all, of a question's candidates
    victim = next(owners[i] for q in probes for i in sorted(candidates(q))
                  if len({owners[j] for j in candidates(q)}) > 1)
    dead = {index for index, master in owners.items() if master == victim}
    workers.kill(victim, signal.SIGKILL)
    wait_until(lambda: not health.served_partitions(client) & dead, 30,
               "the killed worker's heartbeat never went stale")
    sent = {i: client.xlen(keys.request_stream(pmap[i].tag)) for i in dead}
    seen = Counter()
    for q in probes:
        wanted = candidates(q)
        cache_key = keys.answer_cache(asker.generation(fresh=True), 5, cache_form(q))
        client.delete(cache_key)
        if wanted and wanted <= dead:
            with pytest.raises(NoLiveWorker, match=r"partition\(s\) \["):
                asker.ask(q)
            seen["none live"] += 1
            continue
        got = asker.ask(q)
        assert got.missing_partitions == sorted(wanted & dead)
        if got.missing_partitions:
            seen["partial"] += 1
            assert client.get(cache_key) is None
            assert got.public()["missing_partitions"] == got.missing_partitions
            assert pmap.for_passage(got.passage_id).index not in dead
        else:
            seen["whole"] += 1
            assert key(got) == want[q] and "missing_partitions" not in got.public()
    assert seen["partial"] >= 1, seen
    assert {i: client.xlen(keys.request_stream(pmap[i].tag)) for i in dead} == sent
    for master in list(workers.procs):  # no live worker at all: every question fails fast
        workers.kill(master, signal.SIGKILL)
    wait_until(lambda: not health.served_partitions(client), 30, "heartbeats never went stale")
    for q in QUESTIONS:
        with pytest.raises(NoLiveWorker, match="no live shard worker"):
            asker.ask(q, use_cache=False)


def test_a_flood_of_key_miss_gets_computes_a_bounded_number_of_answers(cluster, tmp_path,
                                                                       tiny_artifact):
    """Issue 14: 2,000 GETs of new answer keys made the workers compute and store 2,000
    answers. Each worker now answers at most its budget (here a burst of 5 and a negligible
    rate) and counts the misses it dropped; every miss is one or the other."""
    from cluster import heartbeat

    pool = WorkerPool(cluster, tmp_path, **{"--keymiss-rate": "0.001", "--keymiss-burst": "5"})
    try:
        client = start_pipeline(cluster, pool, tiny_artifact)
        flood = [keys.ask_key(f"flood {i}: who designed the Eiffel Tower?") for i in range(2000)]
        misses = Counter(client.get_node_from_key(k).name for k in flood)
        pipe = cluster.client_as("reader").pipeline(transaction=False)
        for k in flood:
            pipe.get(k)
        assert not any(pipe.execute())  # every GET missed

        def counted() -> dict[str, tuple[int, int]] | None:
            pids = {p.pid for p in pool.procs.values()}
            got = {b.master: (b.counters.get("keymiss", 0), b.counters.get("keymiss_dropped", 0))
                   for b in heartbeat.live_workers(client).values() if b.pid in pids}
            return got if all(sum(got.get(m, (0, 0))) == n for m, n in misses.items()) else None

        done = wait_until(counted, 60, "not every key miss was answered or counted as dropped")
        assert set(done) == set(misses) and len(misses) == 3
        assert all(1 <= answered <= 5 for answered, _ in done.values()), done
        stored = [k for node in client.get_primaries() for k in
                  client.get_redis_connection(node).scan_iter(match="sq:qa:flood *", count=500)]
        assert len(stored) == sum(answered for answered, _ in done.values())
        assert json.loads(client.get(stored[0]))["question"].startswith("flood ")
    finally:
        pool.stop_all()
