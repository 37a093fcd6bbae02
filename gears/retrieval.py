"""Retrieval: a question's candidate passages, BM25 and dense fused (issue 13).

Hybrid where every master has vector sets (Redis 8) and every partition's vectors can be
searched: the question is embedded here, in the asking process (the API's, the CLI's,
eval's), with the encoder that made the partition's vectors, which its index metadata names
(``keys.vector_meta``; a partition's set holds one encoder's vectors only, gears/
embedder.py). Normally that is one encoder for all; while a new one is being rolled out
(gears/reembed.py) the partitions not yet re-embedded keep the old one, which the model store
still holds (it keeps the version before the current), so the question is embedded with each
of the two and each partition is searched with its own: vectors of two encoders never meet.
Encoders are loaded from the model store on the first question that needs them
(sha256-checked, about a second), and the partitions' metadata is read again at most every
``ENCODER_CHECK_S``. Embedding one question costs about 2 ms of one core at int8 (a process
that only asks runs torch on ``QUESTION_THREADS``, 1: two threads cost twice the CPU and the
time; bench/results/hybrid-speed-2026-12-06.json), and the last ``EMBEDDING_CACHE``
questions' vectors are kept per encoder. Then, after BM25's stats fan-out, one round trip per
master carries both the BM25 ``rank`` and the ``VSIM`` of every partition (in Redis' main
thread: gears/dense.py), and the two lists (``fusion.CANDIDATES`` each) are fused by the
shipped method (gears/fusion.py); that round trip asks each partition for its best
``PARTITION_DEPTH`` of each, and a second one only the partitions that may hold more.
Each partition's ``VSIM`` goes between two reads of its metadata in the same pipeline:
unless both name the encoder the question was embedded with, that partition's dense list is
dropped (a re-embed swapped its set in that instant) and the metadata is read again for the
next question.

BM25 alone, as before hybrid retrieval existed, on Redis 7 / Valkey, without an encoder,
while some partition has no searchable vectors (none embedded yet, or an encoder the store
no longer keeps), or when asked to (``mode="bm25"``); the answer says which mode ran.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
import redis

from cluster import capabilities, keys, routing
from cluster.partitions import PartitionMap
from gears import dense, fusion, ranking
from gears.fusion import Fused

log = logging.getLogger("shardqa.ask")

MODES = ("hybrid", "bm25")
DEFAULT_MODE = "hybrid"
#: how often the asker re-reads the partitions' encoders and the servers' vector-set support
ENCODER_CHECK_S = 5.0
#: the same while questions are ranked by BM25 alone
RECHECK_S = 0.5
NO_ENCODER = "no passage encoder pushed"
#: torch threads of a process that only asks (the API, ``eval --mode open``, ``replay``): a
#: question is one short input; on 2 threads it cost 3.6 ms of CPU and 3.7-3.8 ms instead of
#: 1.7-2.0 and 1.7-2.1 (p50, 2 busy cores; bench/results/hybrid-speed-2026-12-06.json,
#: ``question_embedding``). Workers keep their own setting.
QUESTION_THREADS = 1
#: question vectors kept per process (1.5 KB each): a question asked again once the answer
#: cache no longer has it (every ingest starts a new corpus generation; another k) is not
#: embedded again
EMBEDDING_CACHE = 4096
#: candidates of each retriever every partition returns in the first round trip; the rest of
#: a list's best ``fusion.CANDIDATES`` is fetched only from the partitions that may hold more
#: (``deeper``), so the fused list is the same as from 100 per partition. Most questions need
#: no second round trip; those whose article's paragraphs crowd one partition fetch that one
#: again (bench/results/hybrid-rank-2026-12-06.json: depth, second round trips, rank ms)
PARTITION_DEPTH = 20


@dataclass
class Candidates:
    """The passages to read, best first, and how they were found."""

    mode: str  # "hybrid" or "bm25"
    passages: list[Fused]
    #: partitions whose dense list was dropped: their set changed encoder meanwhile
    stale: list[int] = field(default_factory=list)
    embed_ms: float | None = None  # embedding the question (None: not embedded)

    def ranks(self, pid: str | None) -> dict:
        """The answer's ``retrieval`` field: the mode and ``pid``'s 1-based rank in each
        retriever's list (null where that retriever did not find it)."""
        found = next((f.ranks for f in self.passages if f.pid == pid), {})
        return {"mode": self.mode, "bm25": found.get("bm25"), "dense": found.get("dense")}


@dataclass
class DensePlan:
    """Which encoder embeds the question for each partition's vector set."""

    encoders: dict[str, object]  # encoder id -> models.encoder.Encoder
    partitions: dict[int, str]  # partition index -> id of the encoder of its vectors


class QuestionEncoder:
    """The encoders of the partitions' vectors, loaded in this process; thread-safe."""

    def __init__(self, client, check_s: float = ENCODER_CHECK_S, threads: int | None = None,
                 cache_size: int = EMBEDDING_CACHE):
        """``threads``: torch threads for this process (torch's setting is per process: only
        a process that does nothing else with torch should set it); None leaves them."""
        self.client = client
        self.check_s = check_s
        self.threads = threads
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._checked = -1.0e9
        self._plan: DensePlan | None = None
        self._encoders: dict[str, object] = {}
        self._why = ""
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def embed(self, question: str, plan: DensePlan) -> dict[str, np.ndarray]:
        """Encoder id -> ``question``'s vector, for every encoder ``plan`` searches with;
        each computed once while it stays among the ``cache_size`` most recent."""
        out = {}
        for encoder_id in sorted(set(plan.partitions.values())):
            key = (encoder_id, question)
            with self._lock:
                hit = self._vectors.get(key)
                if hit is not None:
                    self._vectors.move_to_end(key)
            if hit is None:
                hit = plan.encoders[encoder_id].embed([question])[0]
                with self._lock:
                    self._vectors[key] = hit
                    while len(self._vectors) > self.cache_size:
                        self._vectors.popitem(last=False)
            out[encoder_id] = hit
        return out

    def current(self, pmap: PartitionMap) -> DensePlan | None:
        """How to embed a question for every partition, or None: BM25 alone (see ``why``).
        Without a plan the partitions are looked at again sooner (``RECHECK_S``): the
        workers may be giving the last of them its vectors right now."""
        if self._due():
            with self._lock:
                if self._due():
                    self._refresh(pmap)
                    self._checked = time.monotonic()
        return self._plan

    def _due(self) -> bool:
        every = self.check_s if self._plan is not None else min(self.check_s, RECHECK_S)
        return time.monotonic() - self._checked > every

    def invalidate(self) -> None:
        """Read the partitions' encoders again before the next question."""
        self._checked = -1.0e9

    @property
    def why(self) -> str:
        """Why questions are ranked by BM25 alone (empty when they are not)."""
        return self._why

    @property
    def loaded(self) -> list[str]:
        """Ids of the encoders held (none until a question needed one)."""
        return sorted(self._encoders)

    def _refresh(self, pmap: PartitionMap) -> None:
        try:
            plan, why = self._look(pmap)
        except redis.RedisError as exc:  # e.g. an aclfile from before the API read models
            plan, why = None, f"the passage encoders cannot be read here ({exc})"
        if why and why != self._why:
            log.warning("ranking questions by BM25 alone: %s", why)
        self._plan, self._why = plan, why

    def _look(self, pmap: PartitionMap) -> tuple[DensePlan | None, str]:
        if not capabilities.vector_sets(self.client):
            return None, "the cluster has no vector sets (Redis < 8 or Valkey)"
        made_by = vector_encoders(self.client, pmap)
        for stale in set(self._encoders) - set(made_by.values()):
            del self._encoders[stale]  # no partition's vectors are made by it any more
        missing = sorted({p.index for p in pmap} - set(made_by))
        if missing:
            return None, self._no_vectors()
        unloadable: dict[str, str] = {}
        for encoder_id in sorted(set(made_by.values()) - set(self._encoders)):
            try:
                self._encoders[encoder_id] = self._load(encoder_id)
            except Exception as exc:  # noqa: BLE001 - a broken copy means BM25, not no answers
                unloadable[encoder_id] = str(exc)
        if unloadable:
            encoder_id, why = next(iter(unloadable.items()))
            lost = sorted(i for i, e in made_by.items() if e in unloadable)
            return None, (f"the vectors of partition(s) {lost} were made by encoder "
                          f"{encoder_id}, which does not load ({why}); they are re-embedded "
                          "with the current encoder ('shardqa reembed')")
        return DensePlan(dict(self._encoders), made_by), ""

    def _no_vectors(self) -> str:
        """Why some partition has no vectors: no encoder, or the workers are at it."""
        from models import store

        node = next(iter(store.master_tags(self.client)), None)
        if node is None or store.current_meta(self.client, node, kind="encoder") is None:
            return NO_ENCODER
        return ("some partitions have no vectors yet (the workers are embedding their "
                "passages: 'shardqa reembed' follows it)")

    def _load(self, encoder_id: str):
        from models import store

        node = next(iter(store.master_tags(self.client)))
        encoder = store.load_id(self.client, node, encoder_id).encoder(threads=self.threads)
        encoder.warm_up()  # TorchScript optimizes on its second call: not on a question
        log.info("question encoder %s loaded", encoder_id)
        return encoder


def vector_encoders(client, pmap: PartitionMap) -> dict[int, str]:
    """Partition index -> id of the encoder its vectors were made with (partitions without
    vectors are left out), one round trip per master."""
    replies = routing.per_master(client, pmap.partitions, lambda pipe, p: pipe.hget(
        keys.vector_meta(p.tag), keys.VECTOR_ENCODER))
    return {index: _text(reply) for index, reply in replies.items()
            if reply and not isinstance(reply, Exception)}


def bm25_only(client, pmap: PartitionMap, question: str, k: int,
              cap: int | None = None) -> Candidates:
    """The BM25 top ``k``, as the asker ranked before hybrid retrieval."""
    ranked = ranking.rank(client, pmap, question, k, cap=cap)
    return Candidates("bm25", [Fused(r.pid, r.partition, r.score, {"bm25": i},
                                     {"bm25": float(r.score)})
                               for i, r in enumerate(ranked, start=1)])


def hybrid(client, pmap: PartitionMap, question: str, k: int, plan: DensePlan,
           vectors: dict[str, np.ndarray], *, cap: int | None = None,
           candidates: int = fusion.CANDIDATES, method: str = fusion.METHOD,
           dense_weight: float = fusion.DENSE_WEIGHT,
           depth: int = PARTITION_DEPTH) -> Candidates:
    """The fused top ``k``: BM25 and VSIM candidates from one round trip per master, each
    partition's VSIM with the question's vector by the encoder of its vectors (``vectors``:
    encoder id -> vector, QuestionEncoder.embed).

    Each list fused is each retriever's best ``candidates`` over all partitions, exactly:
    every partition first returns its best ``depth`` of each, and only a partition whose
    ``depth``-th still scores at least the ``candidates``-th best returned overall (it may
    hold more of them) is asked for its best ``candidates`` in a second round trip
    (``deepen``)."""
    ef = max(candidates, dense.DEFAULT_EF)  # the same HNSW search at any COUNT <= ef
    depth = max(1, min(depth, candidates))
    blobs = {encoder_id: dense.vector_blob(vector) for encoder_id, vector in vectors.items()}
    rank = ranking.prepare(client, pmap, question, candidates, cap=cap)
    found = _Found(plan)
    found.fetch(client, pmap.partitions, rank, blobs, depth, ef, (True, True))
    found.deepen(client, pmap, rank, blobs, depth, candidates, ef)
    fused = fusion.fuse(ranking.best_keys(found.all("bm25"), candidates),
                        ranking.best_keys(found.all("dense"), candidates),
                        method=method, dense_weight=dense_weight)
    return Candidates("hybrid", fused[:k], sorted(found.stale))


class _Found:
    """Each partition's BM25 and dense candidates (ranking sort keys) of one question."""

    def __init__(self, plan: DensePlan):
        self.plan = plan
        self.lists: dict[str, dict[int, list[ranking.Key]]] = {"bm25": {}, "dense": {}}
        self.stale: set[int] = set()

    def all(self, name: str) -> list[ranking.Key]:
        return [key for found in self.lists[name].values() for key in found]

    def fetch(self, client, parts, rank, blobs: dict[str, bytes], count: int, ef: int,
              which: tuple[bool, bool]) -> None:
        """One round trip per master: the best ``count`` of BM25 and/or (``which``) dense of
        ``parts``; a partition whose set changed encoder meanwhile loses its dense list."""
        bm25, dense_too = which[0] and rank is not None, which[1]
        rank = replace(rank, k=count) if bm25 else None

        def build(pipe, p) -> None:
            if bm25:
                rank.queue(pipe, p)
            if dense_too:
                meta = keys.vector_meta(p.tag)
                pipe.hget(meta, keys.VECTOR_ENCODER)
                encoder_id = self.plan.partitions[p.index]
                dense.VectorQuery(blobs[encoder_id], count, ef).queue(pipe, p)
                pipe.hget(meta, keys.VECTOR_ENCODER)

        for index, replies in routing.per_master(client, parts, build, many=True).items():
            if bm25:
                self.lists["bm25"][index] = ranking.keys_of(index, replies[0])
            if not dense_too:
                continue
            before, found, after = replies[-3:]
            if _text(before) == self.plan.partitions[index] == _text(after):
                self.lists["dense"][index] = dense.keys_of(index, found)
            else:
                self.stale.add(index)
                self.lists["dense"].pop(index, None)

    def deepen(self, client, pmap: PartitionMap, rank, blobs: dict[str, bytes], depth: int,
               candidates: int, ef: int) -> None:
        """The second round trip, for the partitions that may hold more of a list's best
        ``candidates`` than the ``depth`` they returned (none, usually: one round trip)."""
        if depth >= candidates:
            return
        more = {name: deeper(found, depth, candidates) for name, found in self.lists.items()}
        for index in set(more["bm25"]) | set(more["dense"]):
            which = (index in more["bm25"], index in more["dense"])
            self.fetch(client, [pmap[index]], rank, blobs, candidates, ef, which)


def deeper(found: dict[int, list[ranking.Key]], depth: int, candidates: int) -> list[int]:
    """The partitions that returned a full ``depth`` whose last score is not below the
    ``candidates``-th best of all returned (all full ones when fewer were returned): only
    they can hold a passage of the best ``candidates`` that they did not return, since each
    returned its best first."""
    full = {index: got for index, got in found.items() if len(got) >= depth}
    every = [key for got in found.values() for key in got]
    if len(every) < candidates:
        return sorted(full)
    cut = sorted(every)[candidates - 1][0]  # -score of the candidates-th best
    return sorted(index for index, got in full.items() if got[-1][0] <= cut)


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
