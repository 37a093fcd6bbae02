"""Ingest into the real 3-master test cluster: hashes, streams and groups checked directly."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest

from cluster import heartbeat, keys, partitions
from cluster.heartbeat import Heartbeat
from loaders.documents import Document, read_documents, read_ovos_wiki
from loaders.passages import split_passages
from loaders.writer import IndexWaitTimeout, ingest, remaining_entries, wait_indexed
from tests.conftest import run_cli

SQUAD_DEV = "/work/shared/data/squad/dev.json"


def stream_entries(client, pmap, with_ids: bool = False) -> list[tuple]:
    """(partition, [entry id,] op, pid) of every ingest stream entry, in order per partition."""
    found = []
    for p in pmap:
        for entry_id, fields in client.xrange(keys.ingest_stream(p.tag)):
            head = (p.index, entry_id) if with_ids else (p.index,)
            found.append((*head, fields[b"op"].decode(), fields[b"pid"].decode()))
    return found


def passage_keys(client) -> set[str]:
    found = set()
    for node in client.get_primaries():
        conn = client.get_redis_connection(node)
        found.update(k.decode() for k in conn.scan_iter(match="sq:{*}:psg:*", count=1000))
    return found


def assert_landed_once(client, docs: list[Document], source: str | None = None) -> None:
    """Every passage of every document: its hash in the right partition, one put entry on
    that partition's stream, the doc hash; nothing else."""
    pmap = partitions.load(client)
    entries = stream_entries(client, pmap)
    puts = [(index, pid) for index, op, pid in entries if op == "put"]
    assert len(puts) == len(set(puts))
    expected_keys, expected_puts = set(), set()
    for doc in docs:
        part = pmap.for_doc(doc.doc_id)
        passages = split_passages(doc)
        for p in passages:
            stored = client.hgetall(keys.passage(part.tag, p.pid))
            assert stored[b"text"].decode() == p.text
            assert stored[b"doc_id"].decode() == doc.doc_id
            assert stored[b"title"].decode() == doc.title
            assert int(stored[b"pos"]) == p.position
            if source is not None:
                assert stored[b"source"].decode() == source
            expected_keys.add(keys.passage(part.tag, p.pid))
            expected_puts.add((part.index, p.pid))
        meta = client.hgetall(keys.doc(part.tag, partitions.doc_key(doc.doc_id)))
        assert meta[b"doc_id"].decode() == doc.doc_id
        assert int(meta[b"passages"]) == len(passages)
        assert len(meta[b"digest"]) == 64
    assert set(puts) == expected_puts
    assert passage_keys(client) == expected_keys


def groups_ready(client, pmap) -> None:
    for p in pmap:
        (group,) = client.xinfo_groups(keys.ingest_stream(p.tag))
        assert group["name"] == keys.WORKER_GROUP.encode()
        assert group["last-delivered-id"] == b"0-0"


# --- every format lands every passage exactly once --------------------------------------

def test_squad_lands_every_context_once_and_reingest_is_a_noop(cluster):
    client = cluster.client()
    docs = [d for d in read_documents([SQUAD_DEV]) if isinstance(d, Document)]
    report = ingest(client, docs, batch_size=100, progress=False)
    assert report.documents == 5 and report.written == 248 and report.errors == []
    assert sum(report.per_partition.values()) == 248
    assert_landed_once(client, docs, source=SQUAD_DEV)
    pmap = partitions.load(client)
    groups_ready(client, pmap)
    before = stream_entries(client, pmap)
    again = ingest(client, read_documents([SQUAD_DEV]), progress=False)
    assert (again.written, again.unchanged, again.deleted) == (0, 248, 0)
    assert stream_entries(client, pmap) == before


def test_jsonl_csv_and_text_folders_land_once(cluster, tmp_path):
    client = cluster.client()
    long_text = "\n\n".join(f"Paragraph {i}. " + "Words and more words. " * 40 for i in range(6))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": "j1", "text": long_text, "title": "Long"},
        {"id": "j2", "text": "Short one."},
        {"text": "No id."},
    ]))
    (tmp_path / "b.csv").write_text('id,title,text\nc1,Cee,"Line one.\n\nLine two."\n')
    folder = tmp_path / "notes"
    (folder / "deep").mkdir(parents=True)
    (folder / "x.md").write_text("# Ex\n\n" + long_text)
    (folder / "deep" / "y.txt").write_text("Why not.")
    paths = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.csv"), str(folder)]
    docs = [d for d in read_documents(paths) if isinstance(d, Document)]
    assert sorted(d.doc_id for d in docs) == ["a.jsonl:3", "c1", "deep/y.txt", "j1", "j2",
                                              "x.md"]
    report = ingest(client, read_documents(paths), batch_size=7, progress=False)
    assert report.documents == 6 and not report.errors
    assert report.written == sum(len(split_passages(d)) for d in docs) > 12
    assert_landed_once(client, docs)


def test_ovos_wiki_sample_lands_once(cluster):
    client = cluster.client()
    docs = list(itertools.islice(read_ovos_wiki(), 400))
    report = ingest(client, docs, progress=False)
    assert report.documents == 400 and report.written >= 400
    assert_landed_once(client, docs, source="ovos-wiki")


# --- changes -----------------------------------------------------------------------------

def test_changed_document_overwrites_and_announces_removed_positions(cluster):
    client = cluster.client()
    pmap = partitions.load(client)
    paragraphs = tuple(f"Paragraph number {i}." for i in range(4))
    ingest(client, [Document("D", "", title="T", paragraphs=paragraphs),
                    Document("other", "Untouched.")], progress=False)
    part = pmap.for_doc("D")
    first = keys.passage(part.tag, partitions.passage_id("D", 0))
    client.hset(first, mapping={"tok_ids": b"\x01", "tok_sig": "old"})  # as a worker would
    before = set(stream_entries(client, pmap, with_ids=True))

    changed = Document("D", "", title="T", paragraphs=("Paragraph number 0, edited.",
                                                       "Paragraph number 1."))
    report = ingest(client, [changed, Document("other", "Untouched.")], progress=False)
    assert (report.written, report.deleted, report.unchanged) == (2, 2, 1)
    new_entries = set(stream_entries(client, pmap, with_ids=True)) - before
    assert sorted((op, pid) for _, _, op, pid in new_entries) == sorted(
        [("put", partitions.passage_id("D", 0)), ("put", partitions.passage_id("D", 1)),
         ("del", partitions.passage_id("D", 2)), ("del", partitions.passage_id("D", 3))])
    assert {index for index, _, _, _ in new_entries} == {part.index}
    stored = client.hgetall(first)
    assert stored[b"text"] == b"Paragraph number 0, edited."
    assert b"tok_ids" not in stored and b"tok_sig" not in stored
    # the worker deletes removed passages after unindexing them, not the loader
    assert client.exists(keys.passage(part.tag, partitions.passage_id("D", 3)))
    meta = client.hgetall(keys.doc(part.tag, partitions.doc_key("D")))
    assert int(meta[b"passages"]) == 2


def test_repeated_document_in_one_input_last_version_wins(cluster):
    client = cluster.client()
    report = ingest(client, [Document("R", "Version one."), Document("R", "Version two.")],
                    progress=False)
    assert report.documents == 2 and report.written == 2
    part = partitions.load(client).for_doc("R")
    text = client.hget(keys.passage(part.tag, partitions.passage_id("R", 0)), "text")
    assert text == b"Version two."


def test_documents_read_before_a_reader_failure_are_written(cluster):
    client = cluster.client()

    def failing():
        yield Document("before", "Written first.")
        raise RuntimeError("reader broke")

    with pytest.raises(RuntimeError, match="reader broke"):
        ingest(client, failing(), progress=False)
    part = partitions.load(client).for_doc("before")
    assert client.exists(keys.passage(part.tag, partitions.passage_id("before", 0)))


# --- waiting for the workers -------------------------------------------------------------

def consume_all(client, pmap, delete: bool = False) -> int:
    """Act as a worker: read and acknowledge every ingest entry (optionally XDEL them)."""
    done = 0
    for p in pmap:
        stream = keys.ingest_stream(p.tag)
        reply = client.xreadgroup(keys.WORKER_GROUP, "test", {stream: ">"}, count=100000)
        for _, entries in reply:
            ids = [entry_id for entry_id, _ in entries]
            if ids:
                client.xack(stream, keys.WORKER_GROUP, *ids)
                if delete:
                    client.xdel(stream, *ids)
                done += len(ids)
    return done


def test_wait_indexed_times_out_without_workers_and_returns_once_consumed(cluster):
    client = cluster.client()
    pmap = partitions.load(client)
    ingest(client, read_documents([SQUAD_DEV]), progress=False)
    assert sum(remaining_entries(client, pmap).values()) == 248
    with pytest.raises(IndexWaitTimeout, match="248 ingest entries.*no shard worker is running"):
        wait_indexed(client, timeout=0.3, progress=False)
    heartbeat.write(client, "w1", Heartbeat(master="127.0.0.1:1", time=time.time()))
    with pytest.raises(IndexWaitTimeout, match=r"1 worker\(s\) running \(w1\)"):
        wait_indexed(client, timeout=0.1, progress=False)
    assert consume_all(client, pmap, delete=True) == 248
    wait_indexed(client, timeout=5, progress=False)  # returns: nothing left
    # entries added after deleted ones: Redis may not know the lag; it is counted instead
    ingest(client, [Document("late", "A late document.")], progress=False)
    assert sum(remaining_entries(client, pmap).values()) == 1
    consume_all(client, pmap)
    assert sum(remaining_entries(client, pmap).values()) == 0


# --- the CLI -----------------------------------------------------------------------------

def cli_env(cluster) -> dict:
    return {"SHARDQA_DIR": cluster.target.directory}


def test_cli_ingest_summary_skip_errors_and_no_wait(cluster, tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_text('{"id": "a", "text": "Fine."}\n{"id": "b", "text": \n'
                    '{"id": "c", "text": "Also fine."}\n')
    proc = run_cli("ingest", str(data), "--no-wait", env=cli_env(cluster))
    assert proc.returncode == 0, proc.stderr
    assert f"{data}:2: invalid JSON" in proc.stdout + proc.stderr
    assert "passages written" in proc.stdout
    client = cluster.client()
    assert len(passage_keys(client)) == 2


def test_cli_abort_writes_nothing_from_the_bad_file(cluster, tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text('{"id": "g", "text": "Good document."}\n')
    bad.write_text('{"id": "b1", "text": "Would be fine."}\n\n{"id": "b2" "text": "x"}\n')
    proc = run_cli("ingest", str(good), str(bad), "--on-error", "abort", "--no-wait",
                   env=cli_env(cluster))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}:3: invalid JSON")
    client = cluster.client()
    pmap = partitions.load(client)
    assert passage_keys(client) == {
        keys.passage(pmap.for_doc("g").tag, partitions.passage_id("g", 0))}


def test_cli_bad_path_format_and_wait_timeout(cluster, tmp_path):
    env = cli_env(cluster)
    proc = run_cli("ingest", str(tmp_path / "nope.jsonl"), env=env)
    assert proc.returncode == 2 and "nope.jsonl: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("ingest", str(tmp_path), "--format", "csv", env=env)
    assert proc.returncode == 2 and "only --format text reads folders" in proc.stderr
    notes = tmp_path / "n.md"
    notes.write_text("# N\n\nSome notes.")
    proc = run_cli("ingest", str(notes), "--timeout", "0.5", env=env)
    assert proc.returncode == 4
    assert "timed out" in proc.stderr and "no shard worker is running" in proc.stderr
    assert len(passage_keys(cluster.client())) == 1  # written, just not indexed


def test_cli_without_cluster_is_a_clear_error(tmp_path):
    proc = run_cli("ingest", SQUAD_DEV, env={"SHARDQA_DIR": str(tmp_path / "none")})
    assert proc.returncode != 0 and "no cluster found" in proc.stderr
    assert Path(SQUAD_DEV).exists()
