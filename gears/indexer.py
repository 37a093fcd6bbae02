"""The ingest path: a partition's ingest entries -> the passages they name -> ingest stages.

The loaders write a passage and append ``{op, pid}`` to its partition's ingest stream; the
indexer reads a batch, keeps the last operation per passage, reads the put passages and
hands every stage the partition, the puts ``{pid: (title, text)}`` and the deletes
``[pid]``. The stages today: token windows (gears.windows), the BM25 index
(gears.index), then the passage vectors (gears.embedder). A new kind of index is a new stage
appended to the list. Stages run in order and each is idempotent; if one fails on an entry,
that entry goes to the dead letters (what earlier stages did with it stays). If the corpus
changed, the generation is bumped before the entries are acknowledged: once nothing is
pending (``wait_indexed``), no cached answer from the old corpus is served as current.
"""

from __future__ import annotations

import logging
from typing import Protocol

from cluster import keys, partitions
from cluster.partitions import Partition
from cluster.routing import CLUSTER_TROUBLE
from gears import index
from gears.consumer import Entry, Poison, StreamConsumer, as_text, check_sizes
from gears.counters import Counters
from gears.follower import Shard
from gears.settings import WorkerSettings

log = logging.getLogger("shardqa.worker")

OPS = ("put", "del")


class IngestStage(Protocol):
    """One thing done to every batch of ingested passages of a partition."""

    name: str

    def apply(self, partition: Partition, puts: dict[str, tuple[str, str]],
              deletes: list[str]) -> int:
        """Do it on the partition's master; return how many passages changed what questions
        are answered from (0 for derived data such as token windows)."""
        ...


class Bm25Stage:
    """Ingest stage: the partition's BM25 index (gears.index), exactly once per content."""

    name = "bm25"

    def __init__(self, shard: Shard):
        self.shard = shard

    def apply(self, partition: Partition, puts: dict[str, tuple[str, str]],
              deletes: list[str]) -> int:
        terms = {pid: index.passage_terms(title, text) for pid, (title, text) in puts.items()}
        change = index.apply(self.shard.node, partition.tag, terms, deletes)
        return change.indexed + change.removed


class Indexer:
    """Reads the owned partitions' ingest streams and runs the stages on each batch."""

    def __init__(self, shard: Shard, consumer: StreamConsumer, stages: list[IngestStage],
                 settings: WorkerSettings, counters: Counters):
        self.shard, self.consumer, self.stages = shard, consumer, stages
        self.settings, self.counters = settings, counters

    def serve(self) -> int:
        """One indexing step over every owned partition; returns the entries handled."""
        entries = self.consumer.read(self.consumer.streams(keys.ingest_stream),
                                     self.settings.ingest_batch)
        if not entries:
            return 0
        by_stream: dict[str, list[Entry]] = {}
        for e in entries:
            by_stream.setdefault(e.stream, []).append(e)
        changed, done = 0, []
        for items in by_stream.values():
            ops = self._valid(items)
            n, handled = self._index_or_bury(items[0].partition, ops)
            changed += n
            done += handled
        if changed:
            self.shard.client.incr(keys.generation())  # before the acks (see above)
        self.consumer.ack(done)
        self.counters.ingested += len(entries)
        return len(entries)

    def _valid(self, items: list[Entry]) -> list[tuple[Entry, str, str]]:
        """(entry, pid, op) of the entries that make sense; the others are dead-lettered."""
        ops = []
        for e in items:
            try:
                ops.append((e, *parse_ingest(e, self.shard, self.settings.max_value_bytes)))
            except Poison as exc:
                self.consumer.bury(e, str(exc))
        return ops

    def _index_or_bury(self, partition: Partition, ops: list) -> tuple[int, list[Entry]]:
        """Index a batch; if it fails, each entry alone, dead-lettering one that still fails.
        Returns (passages changed, entries to acknowledge)."""
        try:
            return self._index(partition, ops), [e for e, _, _ in ops]
        except CLUSTER_TROUBLE:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the shard
            if len(ops) == 1:
                self.counters.errors += 1
                self.consumer.bury(ops[0][0], f"indexing failed: {exc!r}")
                return 0, []
            log.warning("indexing a batch of %d failed (%r); one entry at a time", len(ops), exc)
        changed, done = 0, []
        for op in ops:
            n, handled = self._index_or_bury(partition, [op])
            changed += n
            done += handled
        return changed, done

    def _index(self, partition: Partition, ops: list[tuple[Entry, str, str]]) -> int:
        tag = partition.tag
        latest = {pid: op for _, pid, op in ops}  # the last operation on a passage wins
        put_ids = [pid for pid, op in latest.items() if op == "put"]
        deletes = self._still_deleted(tag, [pid for pid, op in latest.items() if op == "del"])
        pipe = self.shard.node.pipeline(transaction=False)
        for pid in put_ids:
            pipe.hmget(keys.passage(tag, pid), ("title", "text"))
        puts: dict[str, tuple[str, str]] = {}
        for pid, (title, text) in zip(put_ids, pipe.execute(), strict=True):
            if text is None:
                deletes.append(pid)  # vanished meanwhile: make sure it leaves the index
                continue
            puts[pid] = ((title or b"").decode("utf-8"), text.decode("utf-8"))
        return sum(stage.apply(partition, puts, deletes) for stage in self.stages)

    def _still_deleted(self, tag: str, pids: list[str]) -> list[str]:
        """Drop deletes of positions the document has grown back to since (a put follows)."""
        if not pids:
            return []
        pipe = self.shard.node.pipeline(transaction=False)
        for pid in pids:
            pipe.hget(keys.doc(tag, partitions.doc_key_of(pid)), "passages")
        keep = []
        for pid, count in zip(pids, pipe.execute(), strict=True):
            position = int(pid.rsplit(".", 1)[1])
            if count is None or int(count) <= position:
                keep.append(pid)
        return keep


def parse_ingest(entry: Entry, shard: Shard, max_bytes: int) -> tuple[str, str]:
    """(pid, op) of an ingest entry, or Poison saying what is wrong with it."""
    check_sizes(entry, max_bytes)
    f = {as_text(k): as_text(v) for k, v in entry.fields.items()}
    pid, op = f.get("pid", ""), f.get("op", "put")
    if op not in OPS:
        raise Poison(f"unknown op {op[:40]!r}; one of {', '.join(OPS)}")
    if not partitions.is_passage_id(pid):
        raise Poison(f"passage id {pid[:40]!r} does not parse")
    if shard.pmap.for_passage(pid) != entry.partition:
        raise Poison(f"passage {pid} belongs to another partition")
    return pid, op

