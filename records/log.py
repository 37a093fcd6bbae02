"""Writing the log stream without making anyone wait, and reading how far behind SQL is.

``EventLog.put`` costs the caller one in-memory queue put: a background thread, woken by
the first event and then letting more gather for ``LINGER_S``, sends what has queued up as
one pipelined batch of XADDs (``MAXLEN ~`` the configured bound). If Redis
refuses, the batch is retried once, then dropped and counted; the answer that made the
event has long been sent by then, so a failure to log never fails an answer.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from dataclasses import dataclass

import redis

from cluster import keys
from records.events import Event

log = logging.getLogger("shardqa.records")

#: Events sent to Redis in one pipeline at most.
XADD_BATCH = 500
#: How long the sender lets events gather after the first one before sending. Without it
#: every answer woke the sender and cost one XADD round trip of its own, which took ~0.3 ms
#: of the 2 cores from the cached path (0.55 -> 0.85 ms p50 over HTTP, bench --only cached).
LINGER_S = 0.05


class EventLog:
    """Thread-safe; one per process. The sender thread starts on the first ``put``."""

    def __init__(self, client, *, maxlen: int, buffer_events: int = 10_000):
        self.client = client
        self.maxlen = maxlen
        self.dropped = 0
        self.sent = 0
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=buffer_events)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, event: Event) -> None:
        """Queue one event; never blocks, never raises."""
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far was sent (or dropped); True if it was."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:  # queued, or taken but not sent yet
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="shardqa-event-log",
                                                daemon=True)
                self._thread.start()
                atexit.register(self.flush, 2.0)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            time.sleep(LINGER_S)  # puts meanwhile find no waiter to wake: one send per burst
            while len(batch) < XADD_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._send(batch)
            except Exception:  # noqa: BLE001 - the sender must outlive any one batch
                self.dropped += len(batch)
                log.exception("question log: %d event(s) dropped", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _send(self, batch: list[Event]) -> None:
        for attempt in range(2):
            try:
                pipe = self.client.pipeline(transaction=False)
                for event in batch:
                    pipe.xadd(keys.log_stream(), event.fields(), maxlen=self.maxlen,
                              approximate=True)
                pipe.execute()
                self.sent += len(batch)
                return
            except (redis.RedisError, OSError) as exc:
                if attempt:
                    self.dropped += len(batch)
                    log.warning("question log: %d event(s) dropped, Redis refused them: %s",
                                len(batch), exc)
                    return
                time.sleep(0.1)


@dataclass(frozen=True)
class LogState:
    """The stream's length and how many of its entries SQL does not hold yet."""

    length: int
    unsynced: int
    pending: int


def log_state(client) -> LogState:
    """XLEN and the sync group's lag + pending (XINFO GROUPS); every entry is unsynced when
    no sync job ever ran."""
    stream = keys.log_stream()
    length = int(client.xlen(stream))
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:  # no stream yet
        return LogState(length, length, 0)
    group = next((g for g in groups if _text(g.get("name")) == keys.SYNC_GROUP), None)
    if group is None:
        return LogState(length, length, 0)
    pending = int(group.get("pending") or 0)
    lag = group.get("lag")
    if lag is None:  # Redis cannot tell (entries trimmed past the group): count them all
        lag = length
    return LogState(length, min(length, int(lag) + pending), pending)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
