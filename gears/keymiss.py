"""The key-miss responder: a redis-cli ``GET "sq:qa:<question>"`` that missed is answered.

The master publishes a ``keymiss`` event; the worker beside it asks the question (as any
client would, through gears.asker) on a small thread pool and SETs the answer under the
key with a TTL, so the user's next GET finds it. A key already being answered is not
answered twice at once.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from cluster import keys
from gears.counters import Counters
from gears.settings import WorkerSettings

log = logging.getLogger("shardqa.worker")


class KeyMissResponder:
    def __init__(self, client, settings: WorkerSettings, counters: Counters):
        self.client, self.settings, self.counters = client, settings, counters
        self._pool = ThreadPoolExecutor(settings.keymiss_threads, thread_name_prefix="keymiss")
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self._asker = None

    def on_event(self, data: bytes | str) -> None:
        """A keymiss event's payload (the key); answer keys of ours in the background."""
        key = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        if not key.startswith(keys.ASK_PREFIX):
            return
        with self._lock:
            if key in self._inflight:
                return
            self._inflight.add(key)
        self._pool.submit(self._answer, key)

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
