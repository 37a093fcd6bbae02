"""The worker's side of its partitions' streams: read, acknowledge, claim, dead-letter.

Delivery is at-least-once: entries are acknowledged (and deleted) only after their work is
done, so processing an entry twice must be harmless. Entries left pending by a crash are
read again (the consumer name is stable per master: ``recover``) or claimed from other
consumers after ``claim_idle_ms`` (XAUTOCLAIM). A stream or group that vanished (DEL) is
recreated at once. An entry the worker cannot handle, or one delivered ``max_deliveries``
times without an acknowledgement (it crashed the worker each time), is moved to the
partition's capped dead-letter stream and acknowledged, so it never blocks the partition.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from cluster import keys
from cluster.partitions import Partition
from gears.counters import Counters
from gears.follower import Shard
from gears.settings import WorkerSettings

log = logging.getLogger("shardqa.worker")

#: how much of each field of a poison entry the dead-letter stream keeps
DEAD_FIELD_BYTES = 1024
_MOVING = (redis.exceptions.AskError, redis.exceptions.TryAgainError)


@dataclass(frozen=True)
class Entry:
    partition: Partition
    stream: str
    id: bytes | str
    fields: dict


class Poison(ValueError):
    """An entry the worker cannot handle; the message says why (it goes to the dead letters)."""


class StreamConsumer:
    """Reads the worker's partitions' streams in the ``workers`` group as one consumer."""

    def __init__(self, shard: Shard, name: str, settings: WorkerSettings, counters: Counters):
        self.shard, self.name, self.settings, self.counters = shard, name, settings, counters
        self.moved = False  # a slot is moving away: the owner should look at the map again
        self._recover: set[str] = set()  # streams whose own pending entries to re-read

    def streams(self, stream_of: Callable[[str], str]) -> dict[str, Partition]:
        """stream key -> partition, for every partition the shard owns now."""
        return {stream_of(p.tag): p for p in self.shard.owned}

    def _all_streams(self) -> dict[str, Partition]:
        return {**self.streams(keys.ingest_stream), **self.streams(keys.request_stream)}

    def join(self, acquired: set[int]) -> None:
        """Create the group on every owned stream; take over what a partition that just moved
        here left pending (its previous owner has let go of it) without waiting."""
        for stream, p in self._all_streams().items():
            self._create_group(stream)
            if p.index in acquired:
                self.shard.node.xautoclaim(stream, keys.WORKER_GROUP, self.name, 0,
                                           start_id="0-0", count=1000, justid=True)
            self._recover.add(stream)

    def _create_group(self, stream: str) -> None:
        try:
            self.shard.node.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def claim_stale(self) -> None:
        """Claim entries other consumers left pending longer than ``claim_idle_ms``."""
        for stream in self._all_streams():
            try:
                self.shard.node.xautoclaim(stream, keys.WORKER_GROUP, self.name,
                                           self.settings.claim_idle_ms, start_id="0-0",
                                           count=1000, justid=True)
            except _MOVING:
                self.moved = True  # moving away (rebalance): look again next turn
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
            self._recover.add(stream)

    def read(self, streams: dict[str, Partition], count: int) -> list[Entry]:
        """Entries from these streams: our own pending ones first (after a restart), then new."""
        if not streams:
            return []
        self._bury_redelivered([s for s in streams if s in self._recover], streams, count)
        pipe = self.shard.node.pipeline(transaction=False)
        for stream in streams:
            start = "0" if stream in self._recover else ">"
            pipe.xreadgroup(keys.WORKER_GROUP, self.name, {stream: start}, count=count)
        entries: list[Entry] = []
        for stream, reply in zip(streams, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, Exception):
                self._read_failed(stream, reply)
                continue
            got = 0
            for _, items in reply or []:
                for entry_id, fields in items:
                    entry = Entry(streams[stream], stream, entry_id, fields)
                    if fields:
                        entries.append(entry)
                    else:  # a deleted entry still pending reads back empty
                        self.ack([entry])
                    got += 1
            if stream in self._recover and got < count:
                self._recover.discard(stream)
        return entries

    def _read_failed(self, stream: str, error: Exception) -> None:
        if "NOGROUP" in str(error):
            log.warning("%s or its group is gone; recreating it", stream)
            self._create_group(stream)
            return
        if isinstance(error, _MOVING):
            # its slot is moving away (MOVED is an AskError): serve the others and look at
            # the ownership again on the next turn
            self.moved = True
            return
        raise error

    def retry(self, entries: list[Entry]) -> None:
        """Read these (still pending) entries again on the next turn."""
        self._recover.update(e.stream for e in entries)

    def ack(self, entries: list[Entry]) -> None:
        """Acknowledge and delete entries, one round trip for all of them."""
        if not entries:
            return
        by_stream: dict[str, list] = {}
        for e in entries:
            by_stream.setdefault(e.stream, []).append(e.id)
        pipe = self.shard.node.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, keys.WORKER_GROUP, *ids)
            pipe.xdel(stream, *ids)
        pipe.execute()

    def bury(self, entry: Entry, reason: str) -> None:
        """Move an entry to its partition's dead-letter stream and acknowledge it."""
        log.warning("dead-lettering entry %s of %s: %s", as_text(entry.id), entry.stream, reason)
        record = {"stream": entry.stream, "id": as_text(entry.id), "reason": reason[:1000],
                  "consumer": self.name, "at_ms": str(int(time.time() * 1000)),
                  "fields": json.dumps({as_text(k)[:DEAD_FIELD_BYTES]: as_text(v)[:DEAD_FIELD_BYTES]
                                        for k, v in entry.fields.items()})}
        self.shard.node.xadd(keys.dead_letters(entry.partition.tag), record,
                             maxlen=self.settings.dead_letter_cap, approximate=True)
        self.ack([entry])
        self.counters.dead += 1

    def _bury_redelivered(self, recovering: list[str], streams: dict[str, Partition],
                          count: int) -> None:
        """Dead-letter our pending entries already delivered ``max_deliveries`` times: each
        time they were read the worker died or failed before acknowledging them."""
        if not recovering:
            return
        pipe = self.shard.node.pipeline(transaction=False)
        for stream in recovering:
            pipe.xpending_range(stream, keys.WORKER_GROUP, min="-", max="+", count=count,
                                consumername=self.name)
        for stream, pending in zip(recovering, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(pending, Exception):
                continue  # the read that follows says what is wrong
            for item in pending:
                if item["times_delivered"] >= self.settings.max_deliveries:
                    self._bury_pending(streams[stream], stream, item["message_id"],
                                       item["times_delivered"])

    def _bury_pending(self, partition: Partition, stream: str, entry_id, times: int) -> None:
        found = self.shard.node.xrange(stream, min=entry_id, max=entry_id, count=1)
        fields = found[0][1] if found else {}
        self.bury(Entry(partition, stream, entry_id, fields),
                  f"delivered {times} times without being acknowledged")


def as_text(value) -> str:
    """A field name or value as str (bytes decoded, undecodable bytes replaced)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def check_sizes(entry: Entry, limit: int) -> None:
    """Poison if any field name or value is longer than ``limit`` bytes."""
    for k, v in entry.fields.items():
        if len(k) > limit or len(v) > limit:
            raise Poison(f"field {as_text(k)[:40]!r} is over {limit} bytes")
