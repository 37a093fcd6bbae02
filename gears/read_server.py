"""The read server: a partition's read requests -> the reader -> one reply per request.

Requests are read in batches (up to ``max_batch``, waiting at most ``max_wait_ms`` for more:
RedisAI's BATCHSIZE / MINBATCHTIMEOUT). A batch is read in groups that fill one forward
pass each (``max_batch_pairs`` question/window pairs), replying and acknowledging after
every group: under load the first requests do not wait for the whole batch, and a request
whose asker gave up meanwhile is skipped, not read. A request that does not make sense is
dead-lettered; one that makes the reader fail alone gets an error reply and is too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cluster import keys, partitions
from cluster.routing import CLUSTER_TROUBLE
from gears.consumer import Entry, Poison, StreamConsumer, check_sizes
from gears.counters import Counters
from gears.events import ShardEvents
from gears.follower import Shard
from gears.model_slot import NO_MODEL, ModelSlot
from gears.protocol import MAX_SPANS, ReadReply, ReadRequest, SpanReply, now_ms
from gears.settings import WorkerSettings
from gears.windows import TokenWindows

if TYPE_CHECKING:
    from models.reader import Span

log = logging.getLogger("shardqa.worker")

REPLY_TTL_S = 60
Item = tuple[Entry, ReadRequest]


class ReadServer:
    def __init__(self, shard: Shard, consumer: StreamConsumer, events: ShardEvents,
                 slot: ModelSlot, windows: TokenWindows, settings: WorkerSettings,
                 counters: Counters, worker_id: str):
        self.shard, self.consumer, self.events = shard, consumer, events
        self.slot, self.windows = slot, windows
        self.settings, self.counters, self.worker_id = settings, counters, worker_id

    def serve(self) -> int:
        """Read one batch of requests and answer it; returns how many entries it took."""
        s = self.settings
        streams = self.consumer.streams(keys.request_stream)
        batch = self.consumer.read(streams, s.max_batch)
        if batch and len(batch) < s.max_batch and s.max_wait_ms > 0:
            deadline = time.monotonic() + s.max_wait_ms / 1000
            while len(batch) < s.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.events.wait(remaining):
                    break
                batch += self.consumer.read(streams, s.max_batch - len(batch))
        if batch:
            self._answer(batch)
        return len(batch)

    def _answer(self, batch: list[Entry]) -> None:
        started = now_ms()
        live, expired = [], []
        for item in self._valid(batch):
            (expired if item[1].expired(started) else live).append(item)
        try:
            passages = self._passages(live)
        except CLUSTER_TROUBLE:
            raise
        except Exception:  # noqa: BLE001 - find the request that breaks it, serve the others
            log.exception("fetching the passages of a batch failed; one request at a time")
            groups, passages = [[item] for item in live], None
        else:
            groups = reply_groups(live, lambda item: _windows(item, passages),
                                  self.settings.max_batch_pairs)
        for group in groups:
            self._answer_group(group, passages)
        self.consumer.ack([e for e, _ in expired])

    def _valid(self, batch: list[Entry]) -> list[Item]:
        items = []
        for e in batch:
            try:
                items.append((e, parse_request(e, self.shard, self.settings.max_value_bytes)))
            except Poison as exc:
                self.consumer.bury(e, str(exc))
        return items

    def _passages(self, items: list[Item]) -> dict:
        if not items or self.slot.reader is None:
            return {}
        return self.windows.fetch(sorted({pid for _, r in items for pid in r.pids}))

    def _answer_group(self, group: list[Item], passages: dict | None) -> None:
        """Read, reply, acknowledge; if that fails, each request alone, and a request that
        still fails gets an error reply and goes to the dead letters."""
        try:
            self._read_and_reply(group, self._passages(group) if passages is None else passages)
            return
        except CLUSTER_TROUBLE:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the shard
            self.counters.errors += 1
            if len(group) > 1:
                log.warning("a group of %d failed (%r); one at a time", len(group), exc)
                for item in group:
                    self._answer_group([item], None)
                return
            entry, request = group[0]
            self._push([(request, self._reply(request, [], 1, now_ms(),
                                              error=f"worker failed: {exc!r}"))])
            self.consumer.bury(entry, f"reading failed: {exc!r}")

    def _read_and_reply(self, group: list[Item], passages: dict) -> None:
        group_start = now_ms()
        fresh = [r for _, r in group if not r.expired(group_start)]
        self._push(self._read(fresh, passages, group_start))
        self.consumer.ack([e for e, _ in group])
        self.counters.requests += len(fresh)
        self.counters.batch(len(fresh))

    def _push(self, replies: list[tuple[ReadRequest, ReadReply]]) -> None:
        if not replies:
            return
        pipe = self.shard.client.pipeline(transaction=False)
        for request, reply in replies:
            pipe.rpush(request.reply_to, reply.to_json())
            pipe.expire(request.reply_to, REPLY_TTL_S)
        pipe.execute()

    def _reply(self, r: ReadRequest, spans: list[SpanReply], batch: int, started: int,
               pairs: int = 0, read_ms: float = 0.0, error: str | None = None) -> ReadReply:
        return ReadReply(
            ask_id=r.ask_id, partition=r.partition, worker=self.worker_id, spans=spans,
            batch_requests=batch, batch_pairs=pairs,
            queue_ms=max(0.0, started - r.enqueued_ms), read_ms=read_ms, error=error)

    def _read(self, requests: list[ReadRequest], passages: dict, started: int
              ) -> list[tuple[ReadRequest, ReadReply]]:
        n = len(requests)
        if not requests:
            return []
        if self.slot.reader is None:
            err = self.slot.problem or NO_MODEL
            return [(r, self._reply(r, [], n, started, error=err)) for r in requests]
        jobs = [(r, [pid for pid in r.pids if pid in passages]) for r in requests]
        t0 = time.perf_counter()
        try:
            results = self.slot.reader.read_many(
                [(r.question, [passages[pid] for pid in present]) for r, present in jobs],
                top=max(r.spans for r in requests))
        except Exception as exc:  # noqa: BLE001 - a failing batch must not stop the shard
            log.exception("reader failed on a batch")
            self.counters.errors += 1
            return [(r, self._reply(r, [], n, started, error=f"reader failed: {exc}"))
                    for r in requests]
        read_ms = (time.perf_counter() - t0) * 1000
        pairs = sum(len(passages[pid][1].windows) for _, present in jobs for pid in present)
        self.counters.pairs += pairs
        out = []
        for (r, present), spans in zip(jobs, results, strict=True):
            span_replies = [span_reply(pid, s, r.spans)
                            for pid, s in zip(present, spans, strict=True) if s is not None]
            out.append((r, self._reply(r, span_replies, n, started, pairs, read_ms)))
        return out


def span_reply(pid: str, span: Span, wanted: int) -> SpanReply:
    """A passage's best span, with its next ``wanted - 1`` distinct ones (a batch reads as
    many as its most demanding request wants)."""
    return SpanReply(pid, span.start, span.end, span.text, float(span.score), span.null,
                     span.log_z, span.temperature,
                     more=[[m.start, m.end, m.text, float(m.score)]
                           for m in span.more[:max(0, wanted - 1)]])


def parse_request(entry: Entry, shard: Shard, max_bytes: int) -> ReadRequest:
    """The read request of an entry, or Poison saying what is wrong with it."""
    check_sizes(entry, max_bytes)
    try:
        request = ReadRequest.from_fields(entry.fields)
    except KeyError as exc:
        raise Poison(f"missing field {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Poison(f"bad field: {exc}") from None
    if request.partition != entry.partition.index:
        raise Poison(f"partition {request.partition} on the stream of partition "
                     f"{entry.partition.index}")
    if not 1 <= request.spans <= MAX_SPANS:
        raise Poison(f"spans {request.spans} is not from 1 to {MAX_SPANS}")
    if request.reply_to != keys.reply_list(request.ask_id):
        raise Poison(f"reply key {request.reply_to[:60]!r} is not the ask's reply list")
    for pid in request.pids:
        if not partitions.is_passage_id(pid):
            raise Poison(f"passage id {pid[:40]!r} does not parse")
        if shard.pmap.for_passage(pid) != entry.partition:
            raise Poison(f"passage {pid} belongs to another partition")
    return request


def _windows(item: Item, passages: dict) -> int:
    return sum(len(passages[pid][1].windows) for pid in item[1].pids if pid in passages)


def reply_groups(items: list, windows: Callable[[object], int], budget: int) -> list[list]:
    """Consecutive items whose windows fit one forward pass (one item at least per group)."""
    groups: list[list] = []
    used = budget
    for item in items:
        n = windows(item)
        if not groups or used + n > budget:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += n
    return groups
