"""Issue 13: a new passage encoder means a re-embed, on a real Redis 8 cluster (3 masters) with
real workers: every partition's vectors are made again by the new encoder (its id in the
partition's index metadata, VEMB changed, the count equal), a partition's set never holds two
encoders' vectors and a question is never searched against vectors of another encoder than
its own, answers keep coming meanwhile, and a worker killed mid re-embed resumes where it was.

Encoder A is the tiny int8 encoder (dim 32), encoder B another tiny one (dim 48, fp32): a
set's dimension says whose vectors it holds.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from cluster import keys, partitions, routing
from cluster.waiting import until
from gears import health
from gears.asker import Asker
from loaders.documents import Document
from loaders.passages import split_passages
from loaders.writer import ingest, wait_indexed
from models import store
from models.encoder import passage_input
from models.identity import model_id
from tests.conftest import WorkerPool, run_cli, wait_reembedded
from tests.corpus import CORPUS, QUESTIONS

DIMS = {"tiny-enc": 32, "tiny-enc-b": 48}
WORDS = ("harbour lighthouse glacier river valley castle market orchard meadow bridge tower "
         "forest island desert canyon village temple garden mountain lake").split()


def documents(count: int, prefix: str = "re") -> list[Document]:
    """``count`` small deterministic documents, one passage each."""
    return [Document(f"{prefix}-{i}", " ".join(
        WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)) + f" number {i}.",
        title=f"Place {i}") for i in range(count)]


def expected(pmap, docs) -> Counter:
    return Counter(pmap.for_passage(p.pid).index for d in docs for p in split_passages(d))


def current_id(client) -> str:
    node = next(iter(store.master_tags(client)))
    return model_id(store.current_meta(client, node, kind="encoder"))


def vector_state(client, pmap) -> dict[int, dict]:
    """Per partition, read in one transaction on its master: its metadata, VCARD, VDIM of
    its set and of the set being built, and its indexed passages."""
    out = {}
    for p in pmap:
        tx = routing.on_owner(client, keys.vectors(p.tag)).pipeline(transaction=True)
        tx.hmget(keys.vector_meta(p.tag), [keys.VECTOR_ENCODER, keys.VECTOR_NEXT])
        for key in (keys.vectors(p.tag), keys.vectors_next(p.tag)):
            tx.exists(key)
            tx.execute_command("VCARD", key)
        tx.hlen(keys.index_lengths(p.tag))
        meta, live, live_n, nxt, next_n, passages = tx.execute()
        dim = (int(client.execute_command("VDIM", keys.vectors(p.tag))) if live else 0)
        out[p.index] = {"encoder": _text(meta[0]), "next": _text(meta[1]), "vectors": live_n,
                        "dim": dim, "next_vectors": next_n if nxt else None,
                        "passages": passages}
    return out


def check_never_mixed(client, pmap) -> None:
    """A partition's set has the dimension of the encoder its metadata names (one read)."""
    for p in pmap:
        tx = routing.on_owner(client, keys.vectors(p.tag)).pipeline(transaction=True)
        tx.hget(keys.vector_meta(p.tag), keys.VECTOR_ENCODER)
        tx.exists(keys.vectors(p.tag))
        encoder, exists = tx.execute()
        if exists:
            assert encoder is not None, f"partition {p.index} has vectors of no known encoder"
            dim = int(client.execute_command("VDIM", keys.vectors(p.tag)))
            assert dim == DIMS[_text(encoder).split(":")[0]], (p.index, _text(encoder), dim)


def vadd_calls(client, master: str) -> int:
    stats = routing.on_node(client, master).info("commandstats")
    return int(stats.get("cmdstat_VADD", {}).get("calls", 0))


def start(client, pool, tiny_artifact, encoder=None, variant="int8") -> None:
    store.push(client, tiny_artifact)
    if encoder is not None:
        store.push(client, encoder, variant=variant)
    pool.start_all()
    pool.wait_ready()


def test_a_new_encoder_reembeds_every_partition_and_answers_go_on(
        cluster, workers, tiny_artifact, tiny_encoder_artifact, tiny_encoder_b_artifact):
    client = cluster.client()
    start(client, workers, tiny_artifact, tiny_encoder_artifact)
    docs = [*CORPUS, *documents(60)]
    ingest(client, docs, progress=False)
    wait_indexed(client, timeout=120, progress=False)
    wait_reembedded(client)
    pmap = partitions.load(client)
    a_id = current_id(client)
    counts = expected(pmap, docs)
    state = vector_state(client, pmap)
    for index, s in state.items():
        assert (s["encoder"], s["next"], s["next_vectors"]) == (a_id, None, None), s
        assert s["vectors"] == counts[index] == s["passages"]
        assert s["dim"] == (32 if counts[index] else 0)
    pids = {p.pid: p for d in docs for p in split_passages(d)}
    before = {pid: client.execute_command("VEMB", keys.vectors(pmap.for_passage(pid).tag), pid)
              for pid in pids}

    store.push(client, tiny_encoder_b_artifact, variant="fp32")  # while the workers run
    b_id = current_id(client)
    asker = Asker(cluster.client_as("api"), timeout_s=20)
    asker.encoder.check_s = 0  # look at the partitions' encoders before every question
    deadline = time.monotonic() + 120
    asked = 0
    while health.status(client)["reembed"]["partitions"]:
        check_never_mixed(client, pmap)
        answer = asker.ask(QUESTIONS[asked % len(QUESTIONS)], use_cache=False)
        assert answer.passage_id is not None
        asked += 1
        assert time.monotonic() < deadline, health.status(client)["reembed"]
    check_never_mixed(client, pmap)

    for index, s in vector_state(client, pmap).items():
        assert (s["encoder"], s["next"], s["next_vectors"]) == (b_id, None, None), s
        assert s["vectors"] == counts[index], s  # every passage, once
        assert s["dim"] == (48 if counts[index] else 0)
    encoder_b = store.load_id(client, next(iter(store.master_tags(client))), b_id).encoder()
    fresh = encoder_b.embed([passage_input(p.title, p.text) for p in pids.values()])
    for (pid, _), vector in zip(pids.items(), fresh, strict=True):
        stored = np.asarray(client.execute_command(
            "VEMB", keys.vectors(pmap.for_passage(pid).tag), pid), dtype=np.float32)
        assert len(stored) == 48 and len(before[pid]) == 32  # made again, by B
        assert float(stored @ vector) / float(np.linalg.norm(stored)) > 0.99, pid

    answer = asker.ask(QUESTIONS[0], use_cache=False)
    assert answer.retrieval["mode"] == "hybrid" and answer.retrieval["dense"]
    assert asker.encoder.loaded == [b_id]  # A is no longer needed: dropped
    follow = run_cli("reembed", "--dir", cluster.target.directory, check=True)
    assert f"every partition's vectors are made by {b_id}" in follow.stdout
    status = run_cli("status", "--dir", cluster.target.directory, env={"COLUMNS": "200"},
                     check=True).stdout
    assert "retrieval: hybrid (BM25 + dense, encoder tiny-enc-b" in " ".join(status.split())
    assert "re-embedding" not in status


def test_passages_ingested_during_a_reembed_land_in_the_new_set(
        cluster, workers, tiny_artifact, tiny_encoder_artifact, tiny_encoder_b_artifact):
    client = cluster.client()
    two = Document("harbours", "", title="Harbours", paragraphs=(
        "The harbour of the old port town shelters fishing boats from the winter storms.",
        "A lighthouse on the northern cape guides the ships into the bay at night."))
    start(client, workers, tiny_artifact)  # no encoder yet: BM25 alone
    ingest(client, [*CORPUS, two], progress=False)
    wait_indexed(client, timeout=120, progress=False)
    pmap = partitions.load(client)
    assert all(s["encoder"] is None and s["vectors"] == 0
               for s in vector_state(client, pmap).values())
    store.push(client, tiny_encoder_artifact, variant="int8")  # the corpus gets vectors
    wait_reembedded(client)
    assert {s["encoder"] for s in vector_state(client, pmap).values()} == {current_id(client)}

    workers.stop_all()
    store.push(client, tiny_encoder_b_artifact, variant="fp32")
    b_id = current_id(client)
    changed = Document("harbours", "", title="Harbours", paragraphs=(
        "Completely different words about volcanoes and lava.",))  # position 1 removed
    new = Document("bridges", "Granite bridges span narrow rivers between mountain villages.",
                   title="Bridges")
    ingest(client, [changed, new], progress=False)  # waits for the workers started next
    workers.start_all()
    wait_indexed(client, timeout=120, progress=False)
    wait_reembedded(client)

    docs = [*CORPUS, changed, new]
    counts = expected(pmap, docs)
    for index, s in vector_state(client, pmap).items():
        assert (s["encoder"], s["next"], s["vectors"]) == (b_id, None, counts[index]), s
    first, second = split_passages(two)
    tag = pmap.for_passage(first.pid).tag
    assert not client.execute_command("VISMEMBER", keys.vectors(tag), second.pid)
    encoder_b = store.load_id(client, next(iter(store.master_tags(client))), b_id).encoder()
    for passage in (split_passages(changed)[0], split_passages(new)[0]):
        stored = np.asarray(client.execute_command(
            "VEMB", keys.vectors(pmap.for_passage(passage.pid).tag), passage.pid),
            dtype=np.float32)
        vector = encoder_b.embed([passage_input(passage.title, passage.text)])[0]
        assert float(stored @ vector) / float(np.linalg.norm(stored)) > 0.99


def test_a_worker_killed_mid_reembed_resumes_and_asking_never_mixes(
        cluster, tmp_path, tiny_artifact, tiny_encoder_artifact, tiny_encoder_b_artifact):
    client = cluster.client()
    pool = WorkerPool(cluster, tmp_path, **{"--reembed-batch": "2"})
    try:
        start(client, pool, tiny_artifact, tiny_encoder_artifact)
        docs = documents(600)
        ingest(client, docs, progress=False)
        wait_indexed(client, timeout=180, progress=False)
        wait_reembedded(client)
        pmap = partitions.load(client)
        a_id = current_id(client)

        store.push(client, tiny_encoder_b_artifact, variant="fp32")
        b_id = current_id(client)
        victim = kill_mid_reembed(client, pmap, pool, b_id)
        mine = [p for p in pmap if partitions.owners(client, pmap)[p.index] == victim]
        state = vector_state(client, pmap)
        left = 0  # passages of the victim's partitions without a vector of B
        for p in mine:
            s = state[p.index]
            if (s["encoder"], s["next"]) == (b_id, None):
                continue
            in_new_set = s["next_vectors"] if s["next"] == b_id else 0
            left += s["passages"] - (in_new_set or 0)
        assert left > 0, "the worker finished before it was killed"
        settle_others(client, pmap, mine)

        # partitions on A and on B at once: each searched with its own encoder, hybrid
        asker = Asker(cluster.client_as("api"), timeout_s=20)
        found = asker.retrieve(QUESTIONS[0], 50)
        assert found.mode == "hybrid" and not found.stale and found.passages
        plan = asker.encoder.current(pmap)
        assert asker.encoder.loaded == sorted([a_id, b_id])
        assert plan.partitions == {i: s["encoder"]
                                   for i, s in vector_state(client, pmap).items()}
        check_never_mixed(client, pmap)
        # a set swapped between the plan and the search: that partition's dense list is
        # dropped (its metadata, read beside VSIM, names another encoder) and looked at again
        on_a = next(p for p in mine if plan.partitions[p.index] == a_id)
        admin = routing.on_owner(client, keys.vector_meta(on_a.tag))
        admin.hset(keys.vector_meta(on_a.tag), keys.VECTOR_ENCODER, b_id)
        try:
            asker.encoder.check_s = 3600
            found = asker.retrieve(QUESTIONS[0], 50)
            assert found.stale == [on_a.index] and found.mode == "hybrid"
            assert all(f.partition != on_a.index for f in found.passages if "dense" in f.ranks)
        finally:
            admin.hset(keys.vector_meta(on_a.tag), keys.VECTOR_ENCODER, a_id)

        behind = [i for i, s in vector_state(client, pmap).items()
                  if (s["encoder"], s["next"]) != (b_id, None)]
        assert behind and set(behind) <= {p.index for p in mine}
        status = run_cli("status", "--dir", cluster.target.directory,
                         env={"COLUMNS": "250"}, check=True).stdout
        assert f"re-embedding {len(behind)} partition(s) with encoder {b_id}" in \
            " ".join(status.split())
        until(lambda: not {p.index for p in mine} & health.served_partitions(client), 15,
              0.2, what="the killed worker's heartbeat is still fresh", error=AssertionError)
        stuck = run_cli("reembed", "--timeout", "1", "--dir", cluster.target.directory)
        assert stuck.returncode == 1 and "Traceback" not in stuck.stderr
        assert "re-embedding not finished" in stuck.stderr
        assert "no live worker serves" in stuck.stderr

        calls = vadd_calls(client, victim)
        pool.start(victim)  # resumes: embeds what is left, not the whole partition again
        wait_reembedded(client)
        redone = vadd_calls(client, victim) - calls
        assert left <= redone <= left + 2, (left, redone)  # + a batch a kill may have cut
        counts = expected(pmap, docs)
        for index, s in vector_state(client, pmap).items():
            assert (s["encoder"], s["next"], s["vectors"]) == (b_id, None, counts[index]), s
    finally:
        pool.stop_all()


def kill_mid_reembed(client, pmap, pool: WorkerPool, encoder: str) -> str:
    """SIGKILL the worker of the first partition seen half re-embedded; returns its master."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        replies = routing.per_master(client, pmap.partitions, lambda pipe, p: (
            pipe.hget(keys.vector_meta(p.tag), keys.VECTOR_NEXT),
            pipe.execute_command("VCARD", keys.vectors_next(p.tag)),
            pipe.hlen(keys.index_lengths(p.tag))), many=True)
        for index, (building, done, total) in replies.items():
            if _text(building) == encoder and isinstance(done, int) and 0 < done < total:
                master = partitions.owners(client, pmap)[index]
                pool.kill(master)
                return master
        time.sleep(0.002)
    raise AssertionError("no partition was seen half re-embedded")


def settle_others(client, pmap, mine, timeout: float = 120) -> None:
    """Until every partition but ``mine`` has vectors of the current encoder only."""
    skip = {p.index for p in mine}
    until(lambda: set(health.status(client)["reembed"]["partitions"]) <= skip, timeout, 0.1,
          what="the live workers did not re-embed their partitions", error=AssertionError)


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def test_the_demo_returns_once_passages_stored_before_the_encoder_are_embedded(
        cluster, workers, tiny_artifact, tiny_encoder_artifact):
    """``shardqa demo`` run again on a cluster whose passages were stored before the encoder
    was pushed writes nothing new, so no ingest entry waits; it must still return only when
    the re-embed job has given every passage its vector (it returned at once, with most
    partitions' vector sets empty and their questions ranked by BM25 alone)."""
    from gears.cli import follow_embedding
    from shardqa.stack import load_corpus

    client = cluster.client()
    docs = [*CORPUS, *documents(60)]
    start(client, workers, tiny_artifact)  # no encoder yet: BM25 alone
    ingest(client, docs, progress=False)
    wait_indexed(client, timeout=120, progress=False)
    workers.stop_all()
    store.push(client, tiny_encoder_artifact, variant="int8")
    workers.start_all()  # they load torch for seconds: nothing is embedded yet
    report = load_corpus(client, docs, source="test")
    assert (report.written, report.unchanged) == (0, sum(expected(partitions.load(client),
                                                                   docs).values()))
    pmap = partitions.load(client)
    counts = expected(pmap, docs)
    encoder = current_id(client)
    for index, s in vector_state(client, pmap).items():
        assert (s["encoder"], s["next"], s["vectors"], s["passages"]) == (
            encoder, None, counts[index], counts[index]), (index, s)
    assert not follow_embedding(client)  # nothing behind: no wait, no output
