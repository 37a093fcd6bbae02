"""Issue 4: the shard worker tokenizes and indexes what lands on its shard, exactly once."""

from __future__ import annotations

import json
import time
from collections import Counter

from cluster import keys, partitions
from gears import ranking
from gears.read_server import reply_groups
from loaders.documents import Document, read_documents
from loaders.passages import split_passages
from loaders.writer import ingest, remaining_entries, wait_indexed
from models.tokenization import PassageTokens

SQUAD_DEV = "/work/shared/data/squad/dev.json"


def assert_indexed_once(client, docs: list[Document], tokenized: bool = True) -> None:
    """Index state equals a from-scratch computation over exactly these passages."""
    pmap = partitions.load(client)
    expected: dict[int, set[str]] = {}
    for doc in docs:
        for p in split_passages(doc):
            expected.setdefault(pmap.for_doc(doc.doc_id).index, set()).add(p.pid)
    for part in pmap:
        pids = expected.get(part.index, set())
        lengths = client.hgetall(keys.index_lengths(part.tag))
        assert {k.decode() for k in lengths} == pids
        stats = client.hgetall(keys.index_stats(part.tag))
        assert int(stats.get(b"n", 0)) == len(pids)
        assert int(stats.get(b"total", 0)) == sum(int(v) for v in lengths.values())
        df: Counter[str] = Counter()
        for pid in pids:
            terms = json.loads(client.get(keys.index_doc_terms(part.tag, pid)))
            df.update(terms.keys())
            if tokenized:
                fields = client.hgetall(keys.passage(part.tag, pid))
                tokens = PassageTokens.unpack(fields)
                assert tokens is not None and len(tokens.windows) >= 1
                assert fields[b"tok_sig"]
        stored_df = {k.decode(): int(v) for k, v in
                     client.hgetall(keys.index_df(part.tag)).items() if int(v)}
        assert stored_df == dict(df)
        for term, count in list(df.items())[:50]:
            assert client.zcard(keys.index_term(part.tag, term)) == count
    assert sum(remaining_entries(client, pmap).values()) == 0


def test_every_format_tokenized_and_indexed_once(cluster, workers, tiny_artifact, tmp_path):
    from models import store

    client = cluster.client()
    store.push(client, tiny_artifact)
    workers.start_all()
    workers.wait_ready()
    (tmp_path / "d.jsonl").write_text('{"id": "j1", "text": "Jsonl text about otters."}\n')
    (tmp_path / "d.csv").write_text("id,text,title\nc1,Csv text about beavers.,Beavers\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("# Badgers\n\nBadgers dig.\n\nThey sleep by day.")
    paths = [SQUAD_DEV, str(tmp_path / "d.jsonl"), str(tmp_path / "d.csv"),
             str(tmp_path / "notes")]
    docs = [d for d in read_documents(paths) if isinstance(d, Document)]
    ingest(client, docs, progress=False)
    wait_indexed(client, timeout=180, progress=False)
    assert_indexed_once(client, docs)
    gen = int(client.get(keys.generation()))
    # re-ingest: nothing written, nothing re-indexed, the generation stays
    report = ingest(client, docs, progress=False)
    assert report.written == 0
    wait_indexed(client, timeout=60, progress=False)
    assert int(client.get(keys.generation())) == gen
    assert_indexed_once(client, docs)


def test_changed_document_old_passages_no_longer_rank(cluster, workers):
    client = cluster.client()
    workers.start_all()
    workers.wait_ready(need_model=False)
    old = Document("doc", "Platypus lay eggs.\n\nEchidnas also lay eggs.\n\n" + "Filler. " * 40,
                   title="Monotremes")
    ingest(client, [old], progress=False)
    wait_indexed(client, timeout=60, progress=False)
    pmap = partitions.load(client)
    assert ranking.rank(client, pmap, "platypus")[0].pid.startswith(
        partitions.doc_key("doc"))
    new = Document("doc", "Kangaroos carry young in a pouch.", title="Marsupials")
    ingest(client, [new], progress=False)
    wait_indexed(client, timeout=60, progress=False)
    assert ranking.rank(client, pmap, "platypus") == []
    assert ranking.rank(client, pmap, "echidnas") == []
    assert ranking.rank(client, pmap, "kangaroos")[0].pid == partitions.passage_id("doc", 0)
    assert_indexed_once(client, [new], tokenized=False)


def test_worker_killed_mid_ingest_loses_nothing(cluster, workers, tmp_path):
    client = cluster.client()
    workers.start_all()
    workers.wait_ready(need_model=False)
    docs = [Document(f"d{i}", f"Passage number {i} mentions term{i % 97} and word{i % 13}.",
                     title=f"T{i}") for i in range(4000)]
    victim = cluster.masters[0]
    pmap = partitions.load(client)
    victim_parts = [i for i, m in partitions.owners(client, pmap).items() if m == victim]
    workers.kill(victim)  # its partitions queue up while it is away

    def victim_left() -> int:
        left = remaining_entries(client, pmap)
        return sum(left[i] for i in victim_parts)

    ingest(client, docs, progress=False)
    queued = victim_left()
    # small indexing steps, so the kill below lands between two of them and not after the
    # last one (at 256 a partition, ~1,300 entries take two steps)
    workers.options["--ingest-batch"] = "16"
    workers.start(victim)
    deadline = time.monotonic() + 60
    while victim_left() == queued and time.monotonic() < deadline:
        time.sleep(0.005)
    workers.kill(victim)  # SIGKILL in the middle of indexing
    left_at_kill = victim_left()
    assert 0 < left_at_kill < queued
    workers.start(victim)
    wait_indexed(client, timeout=120, progress=False)
    assert_indexed_once(client, docs, tokenized=False)
    # no entry of a killed consumer is left pending anywhere
    for p in pmap:
        for group in client.xinfo_groups(keys.ingest_stream(p.tag)):
            assert int(group["pending"]) == 0


def test_reply_groups_fill_one_forward_pass_each_in_arrival_order():
    windows = {"a": 3, "b": 4, "c": 1, "d": 9, "e": 2}
    groups = reply_groups(list(windows), windows.get, budget=8)
    assert groups == [["a", "b", "c"], ["d"], ["e"]]  # an oversized request goes alone
    assert reply_groups([], windows.get, budget=8) == []
