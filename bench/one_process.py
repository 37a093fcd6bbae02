"""shardqa in one process: the same reading, no Redis (a peer in the bench, issue 16).

What a single process can do with every one of shardqa's reading choices and none of its
distribution: the same TorchScript reader, passages tokenized once at load (as the workers
do at ingest), the same BM25 (shardqa's analyzer, k1, b and Lucene IDF, here in memory with
``bm25s``: the same ranking as the exact ``rank`` in Redis), the same candidate floor and
answer score (gears.asker), and the same batching: questions that arrive together are read
together, up to ``max_batch`` of them waiting at most ``max_wait_ms``, in forward passes of
``max_batch_pairs`` pairs grouped by length (gears.read_server.reply_groups, the worker's
settings). Set beside shardqa's BM25-only figures, the difference is what the distributed
design costs per question on one machine; what it buys (the answer cache, workers on other
hosts, more masters, a corpus larger than one process's memory) is not in this system.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.options import load_reader
from gears import analyzer, ranking
from gears.asker import MIN_RANK_RATIO, RETRIEVAL_WEIGHT, answer_score, normalize
from gears.index import passage_terms
from gears.read_server import reply_groups
from gears.settings import DEFAULTS, WorkerSettings
from loaders.passages import Passage
from models.export import read_metadata
from models.tokenization import PassageTokens, tokenize_passages, window_shape


@dataclass(frozen=True)
class Hit:
    """A passage ranked for a question (index into the corpus, BM25 score)."""

    index: int
    score: float


@dataclass
class _Job:
    question: str
    passages: list[tuple[str, PassageTokens]]
    done: threading.Event = field(default_factory=threading.Event)
    spans: list | None = None
    error: BaseException | None = None

    @property
    def windows(self) -> int:
        return sum(len(tokens.windows) for _text, tokens in self.passages)


class ReadBatcher:
    """One reader thread; callers queue a question with its passages and wait for the spans.
    Questions asked at once share forward passes, as a shard worker's batch does."""

    def __init__(self, reader, settings: WorkerSettings = DEFAULTS):
        self.reader, self.settings = reader, settings
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="one-process-reader",
                                        daemon=True)
        self._thread.start()

    def read(self, question: str, passages: list[tuple[str, PassageTokens]]) -> list:
        job = _Job(question, passages)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.spans

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                return
            for group in reply_groups(jobs, lambda job: job.windows,
                                      self.settings.max_batch_pairs):
                try:
                    results = self.reader.read_many([(j.question, j.passages) for j in group])
                except Exception as exc:  # noqa: BLE001 - the caller gets the error
                    results = [None] * len(group)
                    for job in group:
                        job.error = exc
                for job, spans in zip(group, results, strict=True):
                    job.spans = spans
                    job.done.set()

    def _take(self) -> list[_Job]:
        """A batch: the first job, then whatever arrives within max_wait_ms (None: stop)."""
        first = self._queue.get()
        if first is None:
            return []
        jobs = [first]
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000
        while len(jobs) < self.settings.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            jobs.append(job)
        return jobs


class BM25Index:
    """shardqa's BM25 over the corpus in memory (bm25s; scores are shardqa's divided by
    k1 + 1, as Lucene's form drops that constant: the same order and the same ratios)."""

    def __init__(self, passages: list[Passage]):
        import bm25s

        self.index = bm25s.BM25(k1=ranking.K1, b=ranking.B, method="lucene", dtype="float64",
                                backend="numpy")
        self.index.index([list(passage_terms(p.title, p.text).elements()) for p in passages],
                         show_progress=False)
        self.vocabulary = self.index.vocab_dict
        self.size = len(passages)

    def top(self, question: str, k: int) -> list[Hit]:
        """The best ``k`` passages with a positive score, best first (ties by index)."""
        terms = [t for t in analyzer.query_terms(question) if t in self.vocabulary]
        if not terms:
            return []
        ids = [[self.vocabulary[t] for t in terms]]
        found, scores = self.index.retrieve(ids, k=min(k, self.size), show_progress=False,
                                            n_threads=0, backend_selection="numpy")
        hits = [Hit(int(i), float(s)) for i, s in zip(found[0], scores[0], strict=True)
                if s > 0]
        return sorted(hits, key=lambda h: (-h.score, h.index))


class OneProcessQA:
    """Load the corpus and the reader, then ``answer(question, k)`` from any thread."""

    def __init__(self, artifact: Path, passages: list[Passage], *, variant: str = "fp32",
                 threads: int = 2, settings: WorkerSettings = DEFAULTS,
                 min_rank_ratio: float = MIN_RANK_RATIO,
                 retrieval_weight: float = RETRIEVAL_WEIGHT):
        t0 = time.perf_counter()
        self.reader = load_reader(Path(artifact), variant, threads)
        self.reader.max_batch_pairs = settings.max_batch_pairs
        window, stride = window_shape(read_metadata(Path(artifact)),
                                      self.reader.layout.special_tokens)
        self.passages = passages
        self.tokens = tokenize_passages(self.reader.tokenizer, [p.text for p in passages],
                                        window, stride)
        self.bm25 = BM25Index(passages)
        self.ratio, self.weight = min_rank_ratio, retrieval_weight
        self.batcher = ReadBatcher(self.reader, settings)
        self.load_s = round(time.perf_counter() - t0, 2)

    def answer(self, question: str, k: int) -> tuple[float, str | None]:
        """(ms end to end: rank, floor, read, merge; the answer text)."""
        t0 = time.perf_counter()
        q = normalize(question)
        hits = ranking.above_floor(self.bm25.top(q, k), self.ratio)
        best = None
        if hits:
            spans = self.batcher.read(q, [(self.passages[h.index].text, self.tokens[h.index])
                                          for h in hits])
            top = hits[0].score
            scored = [(answer_score(s.score, h.score, top, self.weight),
                       self.passages[h.index].pid, s) for h, s in zip(hits, spans, strict=True)
                      if s is not None and not s.null]
            # as the asker merges: score, then passage id, then offsets
            best = min(scored, key=lambda x: (-x[0], x[1], x[2].start, x[2].end), default=None)
        return (time.perf_counter() - t0) * 1000, None if best is None else best[2].text

    def close(self) -> None:
        self.batcher.close()
