"""Retrieval: a question's candidate passages, BM25 and dense fused (issue 13).

Hybrid where every master has vector sets (Redis 8) and a passage encoder is pushed: the
question is embedded once, here, in the asking process (the API's, the CLI's, eval's), with
the current encoder read from the model store. It is loaded on the first question that needs
it (sha256-checked, about a second) and reloaded when the stored encoder changes (its pointer
is read at most every ``ENCODER_CHECK_S``). Embedding one question costs about 6-20 ms at
int8 on 2 cores (6.5 ms alone, bench/results/retrieval-fusion-2026-12-02.json; more when the
workers are reading), 25 ms at fp32. Then, after BM25's stats fan-out, one round trip per
master carries both the BM25 ``rank`` and the ``VSIM`` of every partition, and the two lists
(``fusion.CANDIDATES`` each) are fused by the shipped method (gears/fusion.py).

BM25 alone, as before hybrid retrieval existed, on Redis 7 / Valkey, without an encoder, or
when asked to (``mode="bm25"``); the answer says which mode ran.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import redis

from cluster import capabilities, routing
from cluster.partitions import PartitionMap
from gears import dense, fusion, ranking
from gears.fusion import Fused

log = logging.getLogger("shardqa.ask")

MODES = ("hybrid", "bm25")
DEFAULT_MODE = "hybrid"
#: how often the asker re-reads the encoder pointer and the servers' vector-set support
ENCODER_CHECK_S = 5.0
#: torch threads of a process that only asks (the API, ``eval --mode open``, ``replay``):
#: a question is one short input, and two threads made it dearer and slower on 2 busy
#: cores (CPU 7-10 vs 1.7-2.3 ms, p50 14-22 vs 2-3 ms;
#: bench/results/hybrid-speed-2026-12-06.json); the worker keeps its own threads
QUESTION_THREADS = 1
#: question embeddings kept per process (1.5 KB each): a question asked again once the answer
#: cache no longer holds it (a new corpus generation after every ingest, another k) is
#: not embedded again
EMBEDDING_CACHE = 4096


@dataclass
class Candidates:
    """The passages to read, best first, and how they were found."""

    mode: str  # "hybrid" or "bm25"
    passages: list[Fused]
    embed_ms: float | None = None  # embedding the question (None: not embedded)

    def ranks(self, pid: str | None) -> dict:
        """The answer's ``retrieval`` field: the mode and ``pid``'s 1-based rank in each
        retriever's list (null where that retriever did not find it)."""
        found = next((f.ranks for f in self.passages if f.pid == pid), {})
        return {"mode": self.mode, "bm25": found.get("bm25"), "dense": found.get("dense")}


class QuestionEncoder:
    """The cluster's current passage encoder in this process, or None where there is none
    or the servers have no vector sets. Thread-safe."""

    def __init__(self, client, check_s: float = ENCODER_CHECK_S,
                 cache_size: int = EMBEDDING_CACHE, threads: int | None = None):
        """``threads``: torch threads for the process (torch's setting is per process: only
        a process that does nothing else with torch should set it); None leaves it."""
        self.client = client
        self.check_s = check_s
        self.threads = threads
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._checked = -1.0e9
        self._encoder = None
        self._version: str | None = None
        self._why = ""
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def current(self):
        """The models.encoder.Encoder to embed questions with, or None (see ``why``)."""
        if time.monotonic() - self._checked > self.check_s:
            with self._lock:
                if time.monotonic() - self._checked > self.check_s:
                    self._refresh()
                    self._checked = time.monotonic()
        return self._encoder

    def vector(self, question: str) -> np.ndarray | None:
        """``question``'s embedding by the current encoder (None without one), computed once
        per encoder version while it stays among the ``cache_size`` most recent."""
        encoder = self.current()
        if encoder is None:
            return None
        key = (self._version or "", question)
        with self._lock:
            hit = self._vectors.get(key)
            if hit is not None:
                self._vectors.move_to_end(key)
                return hit
        vector = encoder.embed([question])[0]
        with self._lock:
            self._vectors[key] = vector
            while len(self._vectors) > self.cache_size:
                self._vectors.popitem(last=False)
        return vector

    @property
    def why(self) -> str:
        """Why there is no encoder (empty when there is one)."""
        return self._why

    def _refresh(self) -> None:
        try:
            self._look()
        except redis.RedisError as exc:  # e.g. an aclfile from before the API read models
            self._set(None, None, f"the passage encoder cannot be read here ({exc})")

    def _look(self) -> None:
        from models import store

        pointer, node = None, None
        if not capabilities.vector_sets(self.client):
            why = "the cluster has no vector sets (Redis < 8 or Valkey)"
        else:
            node = next(iter(store.master_tags(self.client)), None)
            pointer = store.current_meta(self.client, node, kind="encoder") if node else None
            why = "" if pointer else "no passage encoder pushed"
        if pointer is None:
            self._set(None, None, why)
            return
        version = f"{pointer['version']}:{pointer['variant']}"
        if version == self._version:
            return
        try:
            loaded = store.load(self.client, node, kind="encoder")
        except Exception as exc:  # noqa: BLE001 - a broken copy means BM25, not no answers
            self._set(None, None, f"the passage encoder does not load: {exc}")
            return
        encoder = loaded.encoder(threads=self.threads)
        encoder.warm_up()  # TorchScript optimizes on its second call: not on a question
        self._set(encoder, version, "")
        log.info("question encoder %s loaded (%s)", loaded.meta.get("name"), version)

    def _set(self, encoder, version: str | None, why: str) -> None:
        if why and why != self._why:
            log.warning("ranking questions by BM25 alone: %s", why)
        self._encoder, self._version, self._why = encoder, version, why


def bm25_only(client, pmap: PartitionMap, question: str, k: int,
              cap: int | None = None) -> Candidates:
    """The BM25 top ``k``, as the asker ranked before hybrid retrieval."""
    ranked = ranking.rank(client, pmap, question, k, cap=cap)
    return Candidates("bm25", [Fused(r.pid, r.partition, r.score, {"bm25": i})
                               for i, r in enumerate(ranked, start=1)])


def hybrid(client, pmap: PartitionMap, question: str, k: int, vector: np.ndarray, *,
           cap: int | None = None, candidates: int = fusion.CANDIDATES,
           method: str = fusion.METHOD, dense_weight: float = fusion.DENSE_WEIGHT
           ) -> Candidates:
    """The fused top ``k`` of ``question`` (embedded as ``vector``): BM25 and VSIM
    candidates from one round trip per master."""
    vsim = dense.VectorQuery(dense.vector_blob(vector), candidates)
    rank = ranking.prepare(client, pmap, question, candidates, cap=cap)

    def build(pipe, p) -> None:
        if rank is not None:
            rank.queue(pipe, p)
        vsim.queue(pipe, p)

    found_bm25: list[ranking.Ranked] = []
    found_dense: list[ranking.Ranked] = []
    for index, replies in routing.per_master(client, pmap.partitions, build, many=True).items():
        if rank is not None:
            found_bm25 += ranking.parse(index, replies[0])
        found_dense += dense.parse(index, replies[-1])
    fused = fusion.fuse(ranking.best(found_bm25, candidates), ranking.best(found_dense, candidates),
                        method=method, dense_weight=dense_weight)
    return Candidates("hybrid", fused[:k])
