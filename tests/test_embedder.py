"""Issue 13: the embed ingest stage on a real Redis 8 cluster with real workers: vectors land
in the owning partition's vector set, a re-ingest writes none, a changed passage's vector is
replaced and a removed one is VREMed; without an encoder the stage does nothing."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cluster import keys, partitions
from gears import dense
from loaders.documents import Document
from loaders.passages import split_passages
from loaders.writer import ingest, wait_indexed
from models import store
from models.encoder import passage_input
from tests.corpus import CORPUS


def vadd_calls(client) -> int:
    """VADD calls served by every master so far (INFO commandstats)."""
    total = 0
    for node in client.get_primaries():
        stats = client.get_redis_connection(node).info("commandstats")
        # module commands keep their upper-case name in commandstats
        total += int(stats.get("cmdstat_VADD", {}).get("calls", 0))
    return total


def vcards(client, pmap) -> Counter:
    return Counter({p.index: int(client.execute_command("VCARD", keys.vectors(p.tag)))
                    for p in pmap})


def expected(pmap, docs) -> Counter:
    return Counter(pmap.for_passage(p.pid).index for d in docs for p in split_passages(d))


def start(cluster, workers, tiny_artifact, encoder_artifact=None):
    client = cluster.client()
    store.push(client, tiny_artifact)
    if encoder_artifact is not None:
        store.push(client, encoder_artifact, variant="int8")
    workers.start_all()
    workers.wait_ready()
    return client


def test_ingest_embeds_once_replaces_changed_and_removes_deleted(
        cluster, workers, tiny_artifact, tiny_encoder_artifact):
    client = start(cluster, workers, tiny_artifact, tiny_encoder_artifact)
    pmap = partitions.load(client)
    start_calls = vadd_calls(client)  # the session cluster served other tests' VADDs
    ingest(client, CORPUS, progress=False)
    wait_indexed(client, timeout=120, progress=False)
    assert +vcards(client, pmap) == expected(pmap, CORPUS)  # every passage, on its partition
    pid = split_passages(CORPUS[0])[0].pid
    tag = pmap.for_passage(pid).tag
    assert dense.search(client, pmap, np.asarray(
        client.execute_command("VEMB", keys.vectors(tag), pid), dtype=np.float32),
        k=1)[0].pid == pid

    before = vadd_calls(client)  # re-ingest: the same passages, nothing embedded again
    assert before - start_calls == sum(expected(pmap, CORPUS).values())  # one per passage
    ingest(client, CORPUS, progress=False)
    wait_indexed(client, timeout=120, progress=False)
    assert vadd_calls(client) == before

    two = Document("embed-doc", "", title="Harbours", paragraphs=(
        "The harbour of the old port town shelters fishing boats from the winter storms.",
        "A lighthouse on the northern cape guides the ships into the bay at night."))
    ingest(client, [two], progress=False)
    wait_indexed(client, timeout=120, progress=False)
    first, second = split_passages(two)
    vs = keys.vectors(pmap.for_passage(first.pid).tag)
    old = client.execute_command("VEMB", vs, first.pid)
    assert old and client.execute_command("VEMB", vs, second.pid)
    before = vadd_calls(client)
    changed = Document("embed-doc", "", title="Harbours", paragraphs=(
        "Completely different words about volcanoes and lava.",))  # position 1 removed
    ingest(client, [changed], progress=False)
    wait_indexed(client, timeout=120, progress=False)
    assert client.execute_command("VEMB", vs, first.pid) != old  # replaced
    assert client.execute_command("VEMB", vs, second.pid) is None  # VREMed
    assert vadd_calls(client) == before + 1
    docs = [*CORPUS, changed]
    assert +vcards(client, pmap) == expected(pmap, docs)


def test_passages_are_cut_at_the_workers_token_limit(cluster, workers, tiny_artifact,
                                                     tiny_encoder_artifact):
    """``--embed-max-tokens``: the stored vector embeds the passage's first N tokens (the
    tiny encoder's own limit is 128), and the cut is part of the signature, so changing it
    re-embeds."""
    workers.options["--embed-max-tokens"] = "12"
    client = start(cluster, workers, tiny_artifact, tiny_encoder_artifact)
    pmap = partitions.load(client)
    ingest(client, CORPUS[2:3], progress=False)  # Newton: about 35 tokens with its title
    wait_indexed(client, timeout=120, progress=False)
    passage = split_passages(CORPUS[2])[0]
    tag = pmap.for_passage(passage.pid).tag
    stored = np.asarray(client.execute_command("VEMB", keys.vectors(tag), passage.pid),
                        dtype=np.float32)
    loaded = store.load(client, client.get_primaries()[0].name, kind="encoder")
    text = [passage_input(passage.title, passage.text)]
    cut, whole = (loaded.encoder(max_seq_len=n).embed(text)[0] for n in (12, 128))

    def cosine(a, b) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cosine(stored, cut) > 0.99 and cosine(stored, cut) > cosine(stored, whole)
    signature = client.hget(keys.passage(tag, passage.pid), "emb_sig").decode()
    assert signature.split(":")[-2] == "12"  # encoder id : cut : text digest


def test_without_an_encoder_ingest_is_bm25_only(cluster, workers, tiny_artifact):
    client = start(cluster, workers, tiny_artifact)
    pmap = partitions.load(client)
    ingest(client, CORPUS, progress=False)
    wait_indexed(client, timeout=120, progress=False)
    assert sum(vcards(client, pmap).values()) == 0
    indexed = sum(int(client.hget(keys.index_stats(p.tag), "n") or 0) for p in pmap)
    assert indexed == sum(expected(pmap, CORPUS).values())  # BM25 indexed every passage
    owners = partitions.owners(client, pmap)
    fed = {owners[index] for index in expected(pmap, CORPUS)}  # masters that got passages
    for master in cluster.masters:  # said once by each worker that had passages to embed
        log = (workers.tmp / f"worker-{master.replace(':', '-')}.log").read_text()
        assert log.count("no passage encoder pushed") == (master in fed)


def debian_redis_7() -> str | None:
    """Debian's redis-server when it is a Redis without vector sets (CI installs 7.0)."""
    import shutil

    from cluster import capabilities

    server = shutil.which("redis-server")
    if server and "falkordb" not in server and not capabilities.binary_has_vector_sets(server):
        return server
    return None


@pytest.mark.skipif(debian_redis_7() is None,
                    reason="no Redis 7 redis-server on PATH (CI: apt-get install redis-server)")
def test_redis_7_cluster_is_bm25_only_with_a_clear_status(
        tmp_path, monkeypatch, tiny_artifact, tiny_encoder_artifact):
    from cluster import capabilities
    from tests.conftest import WorkerPool, run_cli, start_cluster

    monkeypatch.setenv("SHARDQA_REDIS_SERVER", debian_redis_7())
    handle = start_cluster(tmp_path)  # secured: its aclfile must load on Redis 7 too
    pool = WorkerPool(handle, tmp_path)
    try:
        client = start(handle, pool, tiny_artifact, tiny_encoder_artifact)
        assert not capabilities.vector_sets(client)
        status = run_cli("cluster", "status", env={"SHARDQA_DIR": handle.target.directory,
                                                   "COLUMNS": "200"}, check=True).stdout
        assert "vector sets: no" in status and "BM25 only" in status
        pmap = partitions.load(client)
        ingest(client, CORPUS, progress=False)
        wait_indexed(client, timeout=120, progress=False)
        indexed = sum(int(client.hget(keys.index_stats(p.tag), "n") or 0) for p in pmap)
        assert indexed == sum(expected(pmap, CORPUS).values())
        logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
        assert "has no vector sets" in logs and "Traceback" not in logs
    finally:
        pool.stop_all()
        handle.local.down(purge=True)
