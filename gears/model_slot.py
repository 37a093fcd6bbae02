"""The shard's reader model: loaded from the serving master's copy, verified, warm.

The copy is checked against its sha256 before torch ever sees it (models.store). A new
version pushed to the shard is loaded on the next look; a missing or corrupt copy is not
given up on: loading is retried with a growing pause (``model_retry_s`` doubling up to
``model_retry_max_s``), so a repaired copy is picked up without a restart. Until a reader is
verified, ``problem`` says why, and the heartbeat carries it.
"""

from __future__ import annotations

import logging
import time
import zlib

import redis

from cluster import keys
from gears.settings import WorkerSettings

log = logging.getLogger("shardqa.worker")

NO_MODEL = "no reader model on this shard (run 'shardqa model push')"


class ModelSlot:
    """Holds at most one verified reader; ``refresh`` keeps it current."""

    def __init__(self, client, settings: WorkerSettings):
        self.client, self.settings = client, settings
        self.loaded = None  # models.store.LoadedModel
        self.reader = None  # models.reader.Reader
        self.version: str | None = None  # "version:variant" of the loaded reader
        self.problem: str | None = "no verified reader yet: not loaded"
        self.window_tokens = 0
        self.stride = 0
        self.signature = ""  # tokenizer digest, window, stride: stored tokens must match it
        self._wanted: str | None = None  # the version the last attempt tried
        self._retry_at = 0.0
        self._pause = settings.model_retry_s

    def forget(self) -> None:
        """Look again at the next refresh, wherever the shard now serves from (failover)."""
        self._wanted, self._retry_at = None, 0.0

    def refresh(self, node: str) -> None:
        """Load the current model of ``node``'s copy if it is not the one held."""
        from models import store

        try:
            pointer = store.current_meta(self.client, node)
        except store.NoModel:
            pointer = None
        if pointer is None:
            self._drop(NO_MODEL)
            return
        wanted = f"{pointer.get('version')}:{pointer.get('variant', '')}"
        if wanted == self.version and self.reader is not None:
            self._wanted = wanted
            return
        if wanted == self._wanted and time.monotonic() < self._retry_at:
            return  # failed recently: wait out the pause
        self._wanted = wanted
        try:
            loaded = store.load(self.client, node)
            self._hold(loaded, wanted)
        except (redis.RedisError, redis.exceptions.RedisClusterException):
            raise  # the worker's loop reconnects
        except Exception as exc:  # noqa: BLE001 - a model that does not load is not fatal
            self._failed(wanted, str(exc) or type(exc).__name__)

    def _drop(self, why: str) -> None:
        self.loaded = self.reader = self.version = None
        self._wanted = None
        self.problem = why

    def _failed(self, wanted: str, why: str) -> None:
        """Keep a reader already held (it was verified); retry the new one after a pause."""
        self._retry_at = time.monotonic() + self._pause
        if self.reader is None:
            self.problem = f"no verified reader: {why}"
        log.error("reader %s not loaded: %s; trying again in %.0f s%s", wanted, why,
                  self._pause, f" (still serving {self.version})" if self.reader else "")
        self._pause = min(self._pause * 2, self.settings.model_retry_max_s)

    def _hold(self, loaded, version: str) -> None:
        from models.tokenization import window_shape

        reader = loaded.reader(threads=self.settings.threads,
                               max_batch_pairs=self.settings.max_batch_pairs)
        reader.warm_up()
        self.window_tokens, self.stride = window_shape(loaded.meta, reader.layout.special_tokens)
        digest = zlib.crc32(loaded.tokenizer.to_str().encode())
        self.signature = f"{digest:08x}:{self.window_tokens}:{self.stride}"
        if self.version is not None and self.version != version:
            # answers cached under the previous reader (or its settings) are stale
            self.client.incr(keys.generation())
        self.loaded, self.reader, self.version = loaded, reader, version
        self.problem, self._pause = None, self.settings.model_retry_s
        log.info("reader %s loaded (%s)", loaded.meta.get("name"), version)
