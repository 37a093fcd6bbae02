"""The write-behind job: the log stream into SQL, at least once, in batches.

One consumer of the ``sync`` group on the log stream. A batch is: the entries this consumer
was given before and never acknowledged (after a restart), entries idle on another consumer
for ``claim_idle_ms`` (XAUTOCLAIM: a job that died elsewhere), then new entries. The batch
is upserted in one transaction and acknowledged only after COMMIT. While the database (or
Redis) is unreachable the same batch is retried with exponential backoff and nothing is
acknowledged, so nothing is lost; the upsert is idempotent, so what was committed but not
acknowledged when the job died is delivered again and written once.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

import redis
from sqlalchemy.exc import SQLAlchemyError

from cluster import keys
from records import schema
from records.events import Event, MalformedEvent
from records.settings import RecordSettings

log = logging.getLogger("shardqa.sync")


def default_consumer() -> str:
    """Stable across restarts on one host, so a restarted job reads its own pending first."""
    return f"sync-{socket.gethostname()}"


@dataclass
class SyncCounters:
    written: int = 0
    malformed: int = 0
    batches: int = 0
    retries: int = 0


class Syncer:
    def __init__(self, client, engine, settings: RecordSettings, *,
                 consumer: str | None = None):
        self.client = client
        self.engine = engine
        self.settings = settings
        self.consumer = consumer or default_consumer()
        self.counters = SyncCounters()
        self.stop = threading.Event()
        self._own_pending_done = False
        self._next_claim = 0.0

    def run(self, *, until_empty: bool = False) -> SyncCounters:
        """Sync until ``stop`` is set (or, with ``until_empty``, until nothing is left)."""
        self._retrying("prepare the database and the consumer group", self._prepare)
        while not self.stop.is_set():
            entries = self._retrying("read the log stream", self._next_batch)
            if entries is None:
                break
            if entries:
                if self._retrying("write a batch to the database", self._write, entries):
                    self._retrying("acknowledge a batch", self._ack, entries)
            elif until_empty:
                break
        return self.counters

    def _prepare(self) -> bool:
        schema.create_tables(self.engine)
        try:
            self.client.xgroup_create(keys.log_stream(), keys.SYNC_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        return True

    def _next_batch(self) -> list[tuple[str, dict | None]]:
        try:
            return self._read_batch()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("the log stream or its group was deleted: creating them again")
            self._prepare()
            self._own_pending_done = False
            return []

    def _read_batch(self) -> list[tuple[str, dict | None]]:
        stream, count = keys.log_stream(), self.settings.batch_size
        entries: list[tuple[str, dict | None]] = []
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self.settings.claim_idle_ms / 2000
            claimed = self.client.xautoclaim(stream, keys.SYNC_GROUP, self.consumer,
                                             self.settings.claim_idle_ms, "0-0", count=count)
            entries += [(_text(i), f) for i, f in claimed[1]]
            # ids trimmed while pending: XAUTOCLAIM drops them from the PEL itself
        if not self._own_pending_done and len(entries) < count:
            own = self._read("0", count - len(entries), block=None)
            self._own_pending_done = not own
            entries += own
        if not entries:
            entries = self._read(">", count, block=self.settings.block_ms)
        return list({entry_id: (entry_id, f) for entry_id, f in entries}.values())

    def _read(self, start: str, count: int, block: int | None) -> list[tuple[str, dict | None]]:
        got = self.client.xreadgroup(keys.SYNC_GROUP, self.consumer, {keys.log_stream(): start},
                                     count=count, block=block)
        if not got:
            return []
        # RESP2 answers [[stream, entries]]; RESP3 {stream: [entries]}
        lists = ([v[0] for v in got.values()] if isinstance(got, dict)
                 else [entries for _, entries in got])
        return [(_text(i), f) for entries in lists for i, f in entries]

    def _write(self, entries: list[tuple[str, dict | None]]) -> bool:
        rows: dict = {}
        for entry_id, fields in entries:
            try:
                table, row = schema.row(Event.from_fields(fields), entry_id)
            except MalformedEvent as exc:
                self.counters.malformed += 1
                log.warning("skipping log entry %s: %s", entry_id, exc)
                continue
            rows.setdefault(table, []).append(row)
        with self.engine.begin() as conn:
            for table, batch in rows.items():
                schema.upsert(conn, table, batch)
        self.counters.written += sum(len(b) for b in rows.values())
        self.counters.batches += 1
        return True

    def _ack(self, entries: list[tuple[str, dict | None]]) -> bool:
        self.client.xack(keys.log_stream(), keys.SYNC_GROUP, *[i for i, _ in entries])
        return True

    def _retrying(self, what: str, step, *args):
        """``step(*args)`` until it succeeds; None if stopped first. Backoff doubles from
        0.2 s up to ``max_backoff_s``; the failure is logged once per outage."""
        delay, failing = 0.2, False
        while not self.stop.is_set():
            try:
                result = step(*args)
            except (SQLAlchemyError, redis.RedisError, OSError) as exc:
                self.counters.retries += 1
                if not failing:
                    log.warning("cannot %s, retrying until it works: %s", what,
                                _first_line(exc))
                failing = True
                self.stop.wait(delay)
                delay = min(delay * 2, self.settings.max_backoff_s)
                continue
            if failing:
                log.warning("could %s again", what)
            return result
        return None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
