"""The key-miss responder: a redis-cli ``GET "sq:qa:<question>"`` that missed is answered.

The master publishes a ``keymiss`` event; the worker beside it asks the question (as any
client would, through gears.asker) on a small thread pool and SETs the answer under the
key with a TTL, so the user's next GET finds it. A key already being answered is not
answered twice at once.

Every GET of a new key is a miss, so a flood of them would make the worker compute and store
an answer for each: the work is bounded by a token bucket (``keymiss_rate`` answers a second,
``keymiss_burst`` at once) and by ``keymiss_pending`` answers waiting or running. A miss over
the budget is dropped (the GET stays a miss) and counted in the heartbeat.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cluster import keys
from gears.counters import Counters
from gears.settings import WorkerSettings

log = logging.getLogger("shardqa.worker")

#: at most one warning about dropped key misses per this many seconds
DROP_WARNING_S = 10.0


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``rate`` <= 0 gives none."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self._clock = rate, max(1, burst), clock
        self._tokens = float(self.burst) if rate > 0 else 0.0
        self._at = clock()

    def take(self) -> bool:
        """Spend a token if there is one."""
        if self.rate <= 0:
            return False
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class KeyMissResponder:
    def __init__(self, client, settings: WorkerSettings, counters: Counters):
        self.client, self.settings, self.counters = client, settings, counters
        self._pool = ThreadPoolExecutor(settings.keymiss_threads, thread_name_prefix="keymiss")
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self._asker = None
        self._budget = TokenBucket(settings.keymiss_rate, settings.keymiss_burst)
        self._warned = -DROP_WARNING_S

    def on_event(self, data: bytes | str) -> None:
        """A keymiss event's payload (the key); answer keys of ours in the background, within
        the key-miss budget."""
        key = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        if not key.startswith(keys.ASK_PREFIX):
            return
        with self._lock:
            if key in self._inflight:
                return
            if len(self._inflight) >= self.settings.keymiss_pending or not self._budget.take():
                self._drop()
                return
            self._inflight.add(key)
        self._pool.submit(self._answer, key)

    def _drop(self) -> None:
        """Count a miss over the budget; say so in the log now and then, not per miss."""
        self.counters.keymiss_dropped += 1
        now = time.monotonic()
        if now - self._warned >= DROP_WARNING_S:
            self._warned = now
            log.warning("key-miss answers over budget (%g/s, %d pending at most): dropping "
                        "misses (%d so far)", self.settings.keymiss_rate,
                        self.settings.keymiss_pending, self.counters.keymiss_dropped)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _answer(self, key: str) -> None:
        from gears.asker import MAX_N, Asker, QuestionError

        try:
            if self._asker is None:
                self._asker = Asker(self.client)
            question = key[len(keys.ASK_PREFIX):]
            try:
                # every answer: the key has no room for an n, the JSON holds them all
                payload = self._asker.ask(question, n=MAX_N).to_json()
            except QuestionError as exc:
                payload = json.dumps({"error": str(exc)})
            self.client.set(key, payload, ex=self.settings.answer_ttl_s)
            self.counters.keymiss += 1
        except Exception:  # noqa: BLE001 - a failed keymiss answer must not kill the worker
            log.exception("keymiss answer for %r failed", key)
            self.counters.errors += 1
        finally:
            with self._lock:
                self._inflight.discard(key)
