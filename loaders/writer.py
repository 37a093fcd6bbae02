"""Writing passages into their partitions, and waiting until the shard workers caught up.

A document goes to the partition chosen by hashing its id. Per document the partition holds
a doc hash (id, digest, passage count, source), one hash per passage, and one entry per
written passage on the partition's ingest stream, which the shard worker consumes to
tokenize and index. Documents are written in batches: the stored digests of a batch are read
in one pipelined round trip, and each partition's part of the batch is one MULTI/EXEC
transaction, so a batch lands in a partition entirely or not at all and a crash never leaves
a document half written. A document whose digest is unchanged writes nothing (re-ingest is a
no-op); a changed one overwrites its passages, drops their stale tokenization, and announces
a ``del`` for positions it no longer has (the worker unindexes and deletes those).

Durability: a batch is acknowledged once its transaction is applied on the master (AOF,
``appendfsync everysec``); when the master has replicas, the writer also sends ``WAIT 1``
on the connection that wrote the batch and returns only once a replica holds it (or after
``WAIT_TIMEOUT_MS``, with a warning: a master whose replicas are down still takes writes).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from cluster import heartbeat, keys, partitions, routing
from cluster.errors import ShardqaError
from cluster.partitions import Partition, PartitionMap, doc_key
from loaders.documents import BadRecord, Document
from loaders.passages import Passage, split_passages

log = logging.getLogger("shardqa.ingest")

#: How long a batch waits for a replica to acknowledge it (WAIT 1).
WAIT_TIMEOUT_MS = 5000

#: Passage fields the shard worker writes; a rewritten passage must not keep stale ones.
TOKEN_FIELDS = ("tok_ids", "tok_offs", "tok_wins", "tok_sig")

stderr = Console(stderr=True, highlight=False)


class IndexWaitTimeout(ShardqaError):
    """The workers did not consume the ingest streams in time."""

    exit_code = 4
    http_status = 504


@dataclass
class IngestReport:
    """What an ingest did. ``per_partition`` counts passages written (put) per partition."""

    documents: int = 0
    written: int = 0
    unchanged: int = 0
    deleted: int = 0
    bytes: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    documents_written: int = 0
    elapsed: float = 0.0

    @property
    def passages(self) -> int:
        return self.written + self.unchanged

    def merge(self, other: IngestReport) -> None:
        for name in ("documents", "written", "unchanged", "deleted", "bytes",
                     "documents_written", "elapsed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for index, count in other.per_partition.items():
            self.per_partition[index] = self.per_partition.get(index, 0) + count
        self.errors.extend(other.errors)


def digest(doc: Document, passages: list[Passage]) -> str:
    """sha256 over the title and every passage text: equal digests mean nothing to write."""
    h = hashlib.sha256()
    h.update(doc.title.encode("utf-8"))
    for p in passages:
        h.update(b"\x1f")
        h.update(p.text.encode("utf-8"))
    return h.hexdigest()


@dataclass
class _Pending:
    doc: Document
    passages: list[Passage]
    partition: Partition
    dkey: str
    digest: str
    source: str


def ensure_groups(client, pmap: PartitionMap) -> None:
    """Create the workers' consumer group on every ingest stream (from the start: entries
    written before any worker joins are still consumed)."""
    for p in pmap:
        try:
            client.xgroup_create(keys.ingest_stream(p.tag), keys.WORKER_GROUP, id="0",
                                 mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def ingest(client, documents: Iterable[Document | BadRecord], *, source: str = "",
           batch_size: int = 500, progress: bool = True) -> IngestReport:
    """Write the documents' passages into their partitions; returns what was done.

    ``BadRecord`` items in ``documents`` are counted as errors and skipped. If reading the
    documents raises, what was read before is written first, then the error propagates.
    """
    pmap = partitions.load(client)
    ensure_groups(client, pmap)
    report = IngestReport()
    started = time.perf_counter()
    batch: list[_Pending] = []
    batch_ids: set[str] = set()
    batch_passages = 0
    with _IngestProgress(progress) as bar:
        def flush() -> None:
            nonlocal batch, batch_ids, batch_passages
            if batch:
                _write_batch(client, batch, report)
                bar.update(report)
            batch, batch_ids, batch_passages = [], set(), 0

        iterator = iter(documents)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                break
            except Exception:
                flush()
                raise
            if isinstance(item, BadRecord):
                report.errors.append(str(item))
                continue
            if item.doc_id in batch_ids:
                flush()  # the later version of a repeated document wins, in order
            passages = split_passages(item)
            dkey = doc_key(item.doc_id)
            batch.append(_Pending(item, passages, pmap.for_doc_key(dkey), dkey,
                                  digest(item, passages), item.source or source))
            batch_ids.add(item.doc_id)
            batch_passages += len(passages)
            report.documents += 1
            report.bytes += sum(len(p.text.encode("utf-8")) for p in passages)
            if batch_passages >= batch_size:
                flush()
        flush()
    report.elapsed = time.perf_counter() - started
    return report


def _write_batch(client, batch: list[_Pending], report: IngestReport) -> None:
    stored = _stored_state(client, batch)
    by_partition: dict[int, list[tuple[_Pending, int, bool]]] = {}
    for item, (old_digest, old_count) in zip(batch, stored, strict=True):
        if old_digest == item.digest and old_count == len(item.passages):
            report.unchanged += len(item.passages)
            continue
        by_partition.setdefault(item.partition.index, []).append(
            (item, old_count, old_digest is not None))
    for index, items in by_partition.items():
        tag = items[0][0].partition.tag
        written, deleted = _write_partition(client, tag, items)
        report.written += written
        report.deleted += deleted
        report.documents_written += len(items)
        report.per_partition[index] = report.per_partition.get(index, 0) + written


def _write_partition(client, tag: str, items: list[tuple[_Pending, int, bool]]
                     ) -> tuple[int, int]:
    """One partition's part of a batch as one MULTI/EXEC; returns (written, deleted)."""

    def queue(pipe) -> tuple[int, int]:
        stream = keys.ingest_stream(tag)
        written = deleted = 0
        for item, old_count, existed in items:
            for p in item.passages:
                key = keys.passage(tag, p.pid)
                pipe.hset(key, mapping={"doc_id": item.doc.doc_id, "title": p.title,
                                        "text": p.text, "pos": p.position,
                                        "source": item.source})
                if existed:  # also positions a pending ``del`` has not removed yet
                    pipe.hdel(key, *TOKEN_FIELDS)
                pipe.xadd(stream, {"op": "put", "pid": p.pid})
            written += len(item.passages)
            for position in range(len(item.passages), old_count):
                pid = partitions.passage_id(item.doc.doc_id, position)
                pipe.xadd(stream, {"op": "del", "pid": pid})
                deleted += 1
            pipe.hset(keys.doc(tag, item.dkey), mapping={
                "doc_id": item.doc.doc_id, "digest": item.digest,
                "passages": len(item.passages), "source": item.source})
        pipe.execute()
        return written, deleted

    return routing.run_on_owner(client, keys.ingest_stream(tag), queue, transaction=True,
                                replicated=True, wait_ms=WAIT_TIMEOUT_MS)


def _stored_state(client, batch: list[_Pending]) -> list[tuple[str | None, int]]:
    """(digest, passage count) stored for each document of the batch: one pipelined round
    trip per master."""
    by_tag: dict[str, list[int]] = {}
    for i, item in enumerate(batch):
        by_tag.setdefault(item.partition.tag, []).append(i)
    raw: list = [None] * len(batch)
    by_node: dict[str, list[str]] = {}
    for tag in by_tag:
        slot = client.keyslot(keys.ingest_stream(tag))
        by_node.setdefault(routing.owner(client, slot).name, []).append(tag)
    for tags in by_node.values():
        def queue(pipe, tags=tags) -> None:
            order = [i for tag in tags for i in by_tag[tag]]
            for i in order:
                item = batch[i]
                pipe.hmget(keys.doc(item.partition.tag, item.dkey), ["digest", "passages"])
            for i, value in zip(order, pipe.execute(), strict=True):
                raw[i] = value

        routing.run_on_owner(client, keys.ingest_stream(tags[0]), queue, transaction=False)
    return [(_text(d) if d is not None else None, int(n) if n is not None else 0)
            for d, n in raw]


class _IngestProgress:
    """documents/s and passages/s while writing (rich, on stderr)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.started = time.perf_counter()
        self.progress: Progress | None = None

    def __enter__(self) -> _IngestProgress:
        if self.enabled:
            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                     TimeElapsedColumn(), console=stderr, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("ingesting", total=None)
        return self

    def update(self, report: IngestReport) -> None:
        if self.progress is None:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.task, description=(
            f"documents {report.documents:,} ({report.documents / elapsed:,.0f}/s)  "
            f"passages {report.passages:,} ({report.passages / elapsed:,.0f}/s)  "
            f"written {report.written:,}  errors {len(report.errors)}"))

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


# --- waiting for the workers -------------------------------------------------------------

def remaining_entries(client, pmap: PartitionMap) -> dict[int, int]:
    """Partition index -> ingest entries the workers' group has not yet acknowledged."""
    result: dict[int, int] = {}
    for p in pmap:
        stream = keys.ingest_stream(p.tag)
        try:
            groups = client.xinfo_groups(stream)
        except redis.ResponseError:  # no such stream: nothing was ever ingested there
            result[p.index] = 0
            continue
        group = next((g for g in groups if _text(g.get("name")) == keys.WORKER_GROUP), None)
        if group is None:
            result[p.index] = client.xlen(stream)
            continue
        lag = group.get("lag")
        if lag is None:  # Redis cannot tell (deleted entries after the group's position)
            lag = _count_after(client, stream, group.get("last-delivered-id"))
        result[p.index] = int(lag) + int(group.get("pending") or 0)
    return result


def _count_after(client, stream: str, last_id) -> int:
    last = _text(last_id) or "0-0"
    return len(client.xrange(stream, min=f"({last}", max="+"))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def running_workers(client, now: float | None = None) -> dict[str, float]:
    """Worker id -> seconds since its last heartbeat, for the live workers."""
    now = time.time() if now is None else now
    return {wid: beat.age(now) for wid, beat in heartbeat.live_workers(client, now).items()}


def wait_indexed(client, timeout: float = 600, progress: bool = True,
                 poll: float = 0.2) -> None:
    """Block until the workers have consumed and acknowledged every ingest entry.

    Raises IndexWaitTimeout naming what is left and whether any worker is running.
    """
    pmap = partitions.load(client)
    deadline = time.monotonic() + timeout
    remaining = remaining_entries(client, pmap)
    total = sum(remaining.values())
    if total == 0:
        return
    bar = None
    if progress:
        bar = Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("entries"), TimeElapsedColumn(), console=stderr,
                       transient=True)
        bar.start()
        task = bar.add_task("indexing", total=total)
    try:
        while True:
            left = sum(remaining.values())
            if bar is not None:
                total = max(total, left)
                bar.update(task, total=total, completed=total - left)
            if left == 0:
                return
            if time.monotonic() >= deadline:
                raise IndexWaitTimeout(_timeout_message(client, remaining, timeout))
            time.sleep(poll)
            remaining = remaining_entries(client, pmap)
    finally:
        if bar is not None:
            bar.stop()


def _timeout_message(client, remaining: dict[int, int], timeout: float) -> str:
    left = sum(remaining.values())
    parts = sum(1 for v in remaining.values() if v)
    workers = running_workers(client)
    if not workers:
        why = ("no shard worker is running (none sent a heartbeat in the last "
               f"{heartbeat.stale_s():g}s); start one per master with "
               "'shardqa worker --master HOST:PORT', or ingest with --no-wait")
    else:
        why = (f"{len(workers)} worker(s) running ({', '.join(sorted(workers))}) "
               "but not caught up yet; wait longer with --timeout")
    return (f"timed out after {timeout:g}s waiting for indexing: {left:,} ingest entries "
            f"left on {parts} partition(s); {why}")
