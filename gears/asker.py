"""Ask: the client side of the shard protocol, used by the API, the CLI and the workers.

cache -> retrieve -> route -> wait -> merge. A cache hit costs one GET (the corpus
generation is remembered for ``generation_max_age_s``) and embeds nothing; a miss ranks
every partition (gears/retrieval.py: the question embedded once, by the encoder of the
partitions' vectors, where the cluster has them, then two pipelined fan-outs, one round trip
per master each: BM25 stats, then BM25 rank and VSIM together, fused), sends one read
request per partition that holds one of the best k passages, waits on one reply list, keeps
the best span and caches it.

Several answers: every read asks the workers for each passage's ``MAX_N`` best distinct
spans, and the merge keeps the ``MAX_N`` best answers across passages, one per answer text
(SQuAD normalisation). The cache holds them all under the one key (``Answer.to_cache``: a
hit for one answer does not parse the others), so ``n`` (how many a caller shows) never
multiplies cache entries; an entry cached before there were several answers is a miss for
``n`` > 1 and is answered afresh.

Concurrent misses of the same question in one process are computed once (single flight):
the others wait for that answer instead of sending the shards the same work again, so a
burst of a new popular question cannot flood the workers.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace

import redis

from cluster import keys, partitions, routing
from cluster.errors import ShardqaError
from gears import fusion, health, ranking, retrieval, selection
from gears.protocol import MAX_SPANS, ReadReply, ReadRequest, now_ms
from models.squad import normalize_answer

log = logging.getLogger("shardqa.ask")

MAX_QUESTION_CHARS = 1000
MAX_K = 50
DEFAULT_K = 5  # passages read per question
MAX_N = MAX_SPANS  # answers a question can get: every read computes (and caches) this many
DEFAULT_N = 1
ASK_TIMEOUT_S = 10.0  # how long a question waits for the shard workers
CACHE_TTL_S = 3600  # how long an answer stays in the cache
#: below this confidence (the one an answer shows: gears.selection's fitted probability) an
#: answer is shown as "no answer" with the reason; None (or 0) is off. Applied after the
#: cache (Answer.abstaining), so one cached answer serves every threshold.
MIN_CONFIDENCE: float | None = None


class QuestionError(ShardqaError):
    """The question itself is unusable (empty, too long, bad k or n)."""

    http_status = 400
    exit_code = 2


class NoReply(ShardqaError):
    """A shard did not answer in time, even after one retry."""

    http_status = 503


class NoLiveWorker(NoReply):
    """No candidate passage of the question is in a partition a live worker reads."""


def normalize(question: str) -> str:
    """Whitespace collapsed; what the reader sees."""
    return " ".join(question.split())


def cache_form(question: str) -> str:
    """Case-folded too; what the cache key is made of."""
    return normalize(question).casefold()


def validate(question, k, n=DEFAULT_N) -> tuple[str, int, int]:
    """(question normalized, k, n), or QuestionError saying what is wrong."""
    if not isinstance(question, str):
        raise QuestionError("the question must be a string")
    q = normalize("".join(ch if ch.isprintable() else " " for ch in question))
    if not q:
        raise QuestionError("the question is empty")
    if len(q) > MAX_QUESTION_CHARS:
        raise QuestionError(f"the question is longer than {MAX_QUESTION_CHARS} characters")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise QuestionError(f"k must be an integer from 1 to {MAX_K}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise QuestionError(f"n must be an integer from 1 to {MAX_N}")
    return q, k, n


def check_min_confidence(value, *, json_field: bool = False) -> float | None:
    """A minimum confidence as a float from 0 to 1, from a number or its text (a flag, an
    env var, a query parameter); None stays None (not set). ``json_field``: a request
    body's field, which must be a JSON number (text or null refused, as for ``n``).
    QuestionError otherwise."""
    if value is None and not json_field:
        return None
    problem = QuestionError("min_confidence must be a number from 0 to 1")
    if value is None or isinstance(value, bool) or (isinstance(value, str) and json_field):
        raise problem
    try:
        number = float(value) if isinstance(value, int | float | str) else math.nan
    except (ValueError, OverflowError):
        raise problem from None
    if not 0.0 <= number <= 1.0:  # NaN fails too
        raise problem
    return number


@dataclass
class AnswerSpan:
    """One of a question's answers: a span of a passage, scored as the answer is."""

    answer: str
    score: float
    passage_id: str
    start: int
    end: int
    #: its probability among the candidate spans of all passages read
    confidence: float | None = None
    #: its passage's ranks, as Answer.retrieval
    retrieval: dict | None = None


@dataclass
class Answer:
    question: str
    answer: str | None
    score: float | None
    passage_id: str | None
    title: str | None
    passage_text: str | None
    start: int | None
    end: int | None
    cached: bool = False
    generation: int = 0
    k: int = 5
    passages_read: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)
    #: candidate partitions left out because no live worker reads them (never cached)
    missing_partitions: list[int] = field(default_factory=list)
    #: why ``answer`` is None when passages were read (the reader said "no answer")
    reason: str | None = None
    #: the answer's probability among the candidate spans of all passages read
    confidence: float | None = None
    #: {"mode": "hybrid"|"bm25", "bm25": rank|None, "dense": rank|None} of the answer's
    #: passage (1-based ranks in each retriever's candidate list)
    retrieval: dict | None = None
    #: the best distinct answers (at most MAX_N), best first: the first is the answer above;
    #: None when not read (a cache hit for one answer) or cached before there were several
    answers: list[AnswerSpan] | None = None
    #: {passage id: {"title", "text"}} of the answers' passages but the answer's own
    passages: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> str:
        return _compact(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Answer:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("an answer is a JSON object")
        if data.get("answers") is not None:
            data["answers"] = [AnswerSpan(**a) for a in data["answers"]]
        return cls(**data)

    def to_cache(self) -> str:
        """The answer-cache entry: two lines, the answer's JSON without its ``answers`` and
        ``passages``, then those two as one JSON object. Compact JSON never holds a raw
        newline, so a hit for one answer (most of them) parses the first line alone: the ten
        answers would triple a hit's JSON parsing (about 10 -> 60 us)."""
        head = asdict(self)
        more = {"answers": head.pop("answers"), "passages": head.pop("passages")}
        return f"{_compact(head)}\n{_compact(more)}"

    @classmethod
    def from_cache(cls, raw: str | bytes, n: int) -> Answer | None:
        """The cached answer, its further answers read only when ``n`` > 1 wants them; None
        for an entry cached before there were several (one line) when they are wanted."""
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        head, _, more = raw.partition(b"\n")
        answer = cls.from_json(head)
        if n > 1:
            if not more:
                return None
            rest = json.loads(more)
            answer.answers = [AnswerSpan(**a) for a in rest["answers"]]
            answer.passages = rest["passages"]
        return answer

    def abstaining(self, min_confidence: float | None) -> Answer:
        """This answer as shown under ``min_confidence``: "no answer" with the reason when
        its confidence is below it (as a SQuAD 2.0 reader's "no answer": no span, no
        passage), else the further answers below it left out. None or 0: unchanged."""
        if not min_confidence or self.answer is None:
            return self
        if self.confidence is None or self.confidence < min_confidence:
            shown = "unknown" if self.confidence is None else f"{self.confidence:.2f}"
            return replace(
                self, answer=None, score=None, passage_id=None, title=None,
                passage_text=None, start=None, end=None, confidence=None, answers=[],
                passages={}, retrieval=self.retrieval and {
                    "mode": self.retrieval.get("mode"), "bm25": None, "dense": None},
                reason=f"the best answer's confidence ({shown}) is below the minimum "
                       f"confidence ({min_confidence:g})")
        if not self.answers:
            return self
        return replace(self, answers=[a for a in self.answers if a.confidence is not None
                                      and a.confidence >= min_confidence])

    def public(self, n: int = DEFAULT_N) -> dict:
        """The API's answer body; with ``n`` > 1 also ``answers``, the ``n`` best distinct
        answers (fewer if the passages read hold fewer), best first."""
        body = {
            "question": self.question, "answer": self.answer, "score": self.score,
            "passage": None if self.passage_id is None else {
                "id": self.passage_id, "title": self.title, "text": self.passage_text},
            "start": self.start, "end": self.end, "cached": self.cached, "k": self.k,
            "generation": self.generation, "passages_read": self.passages_read,
            "timings_ms": self.timings_ms,
            **({"missing_partitions": self.missing_partitions}
               if self.missing_partitions else {}),
            **({"reason": self.reason} if self.reason else {}),
            **({"confidence": self.confidence} if self.confidence is not None else {}),
            **({"retrieval": self.retrieval} if self.retrieval is not None else {}),
        }
        if n > 1:
            body["answers"] = [self._public_span(a) for a in (self.answers or [])[:n]]
        return body

    def _public_span(self, span: AnswerSpan) -> dict:
        own = span.passage_id == self.passage_id
        passage = ({"title": self.title, "text": self.passage_text} if own
                   else self.passages.get(span.passage_id, {}))
        return {
            "answer": span.answer, "score": span.score,
            **({"confidence": span.confidence} if span.confidence is not None else {}),
            "passage": {"id": span.passage_id, "title": passage.get("title"),
                        "text": passage.get("text")},
            "start": span.start, "end": span.end,
            **({"retrieval": span.retrieval} if span.retrieval is not None else {}),
        }


#: how much the passage's retrieval score (relative to the best passage's) adds to the
#: reader's span score: gears.selection owns it (BM25 alone, and hybrid)
RETRIEVAL_WEIGHT = selection.BM25.weight

#: candidates ranking below this share of the best retrieval score are not read: a passage far
#: below the best rarely holds the answer, and reading it costs a full reader pass and
#: gives the uncalibrated reader a distractor to prefer. Chosen with RETRIEVAL_WEIGHT on dev
#: in open mode (every question's top 5 read once, each setting replayed; fp32 F1):
#: 0.5 / 3 -> 52.3 F1 reading 4.11 windows a question; 0.8, 0.85, 0.9 / 4 -> 55.6, 56.2,
#: 55.8 reading 2.07, 1.76, 1.47; 1.0 (the top passage only) -> 52.8. 0.85 is the middle of
#: that plateau. 0 reads all k.
MIN_RANK_RATIO = 0.85

#: the same two settings for the fused score of hybrid retrieval (another scale: min-max
#: normalized, at most 1), chosen by bench/floor_sweep.py on the demo corpus plus the SQuAD
#: dev paragraphs: every question of the natural dev set (56) and SQuAD dev (1,075) ranked
#: once, its top 5 all read once by each reader variant, each setting replayed (k=5;
#: bench/results/floor-sweep-hybrid-fp32-2026-12-06-2210.json and ...-int8-...). F1 natural /
#: SQuAD at weight 8, fp32 then int8, windows read natural / SQuAD: ratio 0.6: 58.50 / 59.36,
#: 55.23 / 57.79, 3.21 / 3.17; 0.65: 58.50 / 59.83, 55.23 / 58.04, 2.98 / 2.80; 0.7: 58.50 /
#: 59.78, 55.23 / 57.98, 2.73 / 2.44; 0.75: 58.50 / 59.35, 55.23 / 57.56, 2.46 / 2.14. 0.7 is
#: the highest floor that loses no F1 on either set with either reader and still reads the
#: right passage for >= 85 % of both (85.7 % natural, 88.2 % SQuAD; 0.75: 83.9 %). Weight 8
#: is the one that loses nothing anywhere at 0.7 (6: SQuAD fp32 59.13; 10: natural fp32
#: 56.72), so one floor and one weight serve both variants.
HYBRID_MIN_RANK_RATIO = 0.7
HYBRID_RETRIEVAL_WEIGHT = selection.HYBRID.weight


def answer_score(span_score: float, retrieved: float, top: float, weight: float) -> float:
    """Reader span score (start + end logit) plus ``weight`` x the passage's relative
    retrieval score: selection.Selection's score with the "relative" feature, for the benches
    and tests that score spans outside the asker."""
    return selection.Selection(weight).score(span_score, retrieved / top if top > 0 else 0.0)


class Asker:
    """Thread-safe; one per process is plenty."""

    def __init__(self, client, *, timeout_s: float = ASK_TIMEOUT_S,
                 cache_ttl_s: int = CACHE_TTL_S, generation_max_age_s: float = 0.25,
                 retrieval_weight: float | None = None,
                 min_rank_ratio: float | None = None,
                 rank_cap: int = ranking.POSTINGS_CAP,
                 retrieval_mode: str = retrieval.DEFAULT_MODE,
                 dense_weight: float = fusion.DENSE_WEIGHT,
                 candidates: int = fusion.CANDIDATES,
                 encoder_threads: int | None = None,
                 min_confidence: float | None = MIN_CONFIDENCE):
        """``retrieval_mode``: "hybrid" fuses BM25 and dense where the cluster can (else
        BM25 alone), "bm25" never embeds. ``retrieval_weight`` and ``min_rank_ratio``: None
        takes the default of the mode a question is ranked in (BM25's or hybrid's).
        ``encoder_threads``: torch threads of this process for embedding questions
        (retrieval.QUESTION_THREADS in a process that only asks; None leaves them).
        ``min_confidence``: answers shown below it are "no answer" (None or 0: off); a
        question's own ``min_confidence`` replaces it."""
        if retrieval_mode not in retrieval.MODES:
            raise ValueError(f"retrieval mode must be one of {retrieval.MODES}")
        self.min_confidence = check_min_confidence(min_confidence)
        self.client = client
        self.rank_cap = rank_cap
        self.retrieval_mode = retrieval_mode
        self.dense_weight = dense_weight
        self.candidates = candidates
        self.encoder = retrieval.QuestionEncoder(client, threads=encoder_threads)
        self.retrieval_weight = retrieval_weight
        self.min_rank_ratio = min_rank_ratio
        self.timeout_s = timeout_s
        self.cache_ttl_s = cache_ttl_s
        self.generation_max_age_s = generation_max_age_s
        self._pmap = None
        self._generation = (0, -1.0)  # (value, monotonic time read)
        self._lock = threading.Lock()
        self._inflight: dict[str, _Flight] = {}

    @property
    def pmap(self) -> partitions.PartitionMap:
        if self._pmap is None:
            self._pmap = partitions.load(self.client)
        return self._pmap

    def generation(self, fresh: bool = False) -> int:
        value, at = self._generation
        now = time.monotonic()
        if fresh or now - at > self.generation_max_age_s:
            value = int(self.client.get(keys.generation()) or 0)
            self._generation = (value, now)
        return value

    def ask(self, question, k: int = DEFAULT_K, n: int = DEFAULT_N, *,
            use_cache: bool = True, min_confidence: float | None = None) -> Answer:
        """The answer (``public(n)`` is its API body: ``n`` only says how many answers a
        caller wants; every answer holds ``MAX_N``), shown under ``min_confidence`` (None:
        this asker's; 0: off). The cache holds the answer before the threshold: a threshold
        set later applies to cached answers too, and needs no entry of its own."""
        threshold = self._threshold(min_confidence)
        return self._answer(question, k, n, use_cache).abstaining(threshold)

    def _threshold(self, min_confidence: float | None) -> float | None:
        if min_confidence is None:
            return self.min_confidence
        return check_min_confidence(min_confidence)

    def _answer(self, question, k: int, n: int, use_cache: bool) -> Answer:
        t0 = time.perf_counter()
        q, k, n = validate(question, k, n)
        gen = self.generation()
        cache_key = keys.answer_cache(gen, k, cache_form(q))
        if use_cache:
            answer = self._from_cache(cache_key, t0, n)
            if answer is not None:
                return answer
        with self._lock:
            flight = self._inflight.get(cache_key) if use_cache else None
            leader = flight is None
            if leader:
                flight = _Flight()
                if use_cache:
                    self._inflight[cache_key] = flight
        if not leader:  # the same question is being answered right now: share it
            answer = flight.wait(self.timeout_s + 5)
            answer.timings_ms = {**answer.timings_ms, "total": _ms(t0)}
            return answer
        try:
            answer = self._compute(q, k, gen, cache_key, t0)
        except BaseException as exc:
            flight.fail(exc)
            raise
        else:
            flight.done(answer)
        finally:
            with self._lock:
                if self._inflight.get(cache_key) is flight:
                    del self._inflight[cache_key]
        return answer

    def cached(self, question, k: int = DEFAULT_K, n: int = DEFAULT_N, *,
               min_confidence: float | None = None) -> Answer | None:
        """The cached answer (shown under ``min_confidence``, as ``ask``), or None on a
        miss; never sends the shards anything (the API answers hits without waiting for a
        slot among the uncached reads)."""
        t0 = time.perf_counter()
        q, k, n = validate(question, k, n)
        threshold = self._threshold(min_confidence)
        answer = self._from_cache(keys.answer_cache(self.generation(), k, cache_form(q)), t0, n)
        return None if answer is None else answer.abstaining(threshold)

    def _from_cache(self, cache_key: str, t0: float, n: int = DEFAULT_N) -> Answer | None:
        """A hit as an Answer; an entry that does not parse is a miss (and is overwritten
        when the answer is computed), never an error for an hour. So is one cached before
        there were several answers, when ``n`` > 1 wants them."""
        hit = self._cached(cache_key)
        if hit is None:
            return None
        try:
            answer = Answer.from_cache(hit, n)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("malformed answer cache entry %.80r (%s); answering afresh",
                        cache_key, exc)
            return None
        if answer is None:
            return None
        answer.cached = True
        answer.timings_ms = {"total": _ms(t0)}
        return answer

    def _cached(self, key: str) -> bytes | None:
        """GET on the plain client of the master that owns ``key``'s slot.

        The cluster client's per-command routing costs about as much as the GET itself
        (bench: 0.29 vs 0.15 ms). Anything unexpected (a moved slot, a node gone) goes
        through the cluster client, which refreshes its slot map and follows.
        """
        try:
            return routing.on_owner(self.client, key).get(key)
        except redis.RedisError:
            return self.client.get(key)

    def retrieve(self, q: str, k: int) -> retrieval.Candidates:
        """The best ``k`` candidates, hybrid where the cluster can, else BM25 alone."""
        plan = self.encoder.current(self.pmap) if self.retrieval_mode == "hybrid" else None
        if plan is not None:
            t0 = time.perf_counter()
            vectors = self.encoder.embed(q, plan)
            embed_ms = _ms(t0)
            try:
                found = retrieval.hybrid(self.client, self.pmap, q, k, plan, vectors,
                                         cap=self.rank_cap, candidates=self.candidates,
                                         dense_weight=self.dense_weight)
            except redis.ResponseError as exc:  # e.g. an aclfile from before VSIM was allowed
                log.warning("dense search failed (%s); this question is ranked by BM25", exc)
            else:
                found.embed_ms = embed_ms
                if found.stale:  # a re-embed swapped a set in: look at the encoders again
                    self.encoder.invalidate()
                return found
        return retrieval.bm25_only(self.client, self.pmap, q, k, cap=self.rank_cap)

    def _compute(self, q: str, k: int, gen: int, cache_key: str, t0: float) -> Answer:
        t_rank = time.perf_counter()
        found = self.retrieve(q, k)
        ratio, rule = self.settings(found.mode)
        ranked = ranking.above_floor(found.passages, ratio)
        rank_ms = _ms(t_rank)
        ranked, missing = self._live(ranked)
        answer = Answer(q, None, None, None, None, None, None, None, generation=gen, k=k,
                        passages_read=[r.pid for r in ranked], missing_partitions=missing,
                        answers=[])
        if ranked:
            replies, wait_ms = self._read(q, ranked)
            self._merge(answer, ranked, replies, rule)
            answer.timings_ms = {
                "rank": rank_ms, "wait": wait_ms,
                "queue": max((r.queue_ms for r in replies), default=0.0),
                "read": max((r.read_ms for r in replies), default=0.0),
            }
        else:
            answer.timings_ms = {"rank": rank_ms}
        if found.embed_ms is not None:  # part of rank: the question embedded (or cached)
            answer.timings_ms["embed"] = found.embed_ms
        answer.retrieval = found.ranks(answer.passage_id)
        for span in answer.answers:
            span.retrieval = found.ranks(span.passage_id)
        if not missing:  # a partial answer is not kept: the next ask may see everything
            self.client.set(cache_key, answer.to_cache(), ex=self.cache_ttl_s)
        answer.timings_ms["total"] = _ms(t0)
        return answer

    def _live(self, ranked: list[fusion.Fused]) -> tuple[list[fusion.Fused], list[int]]:
        """Candidates in partitions a live worker reads, and the partitions left out.

        A request to a partition nobody reads would hold an API thread for the whole
        timeout: answer from the live ones (saying which are missing), or fail at once
        naming the partitions when none of the candidates is live."""
        wanted = {r.partition for r in ranked}
        if not wanted:
            return ranked, []
        missing = sorted(wanted - health.served_partitions(self.client))
        if not missing:
            return ranked, []
        if len(missing) == len(wanted):
            raise NoLiveWorker(f"no live shard worker reads partition(s) {missing}, which "
                               "hold this question's passages ('shardqa status')")
        log.warning("answering without partition(s) %s: no live worker reads them", missing)
        return [r for r in ranked if r.partition not in missing], missing

    # --- routing -------------------------------------------------------------------------

    def _read(self, question: str, ranked: list[fusion.Fused]) -> tuple[list[ReadReply], float]:
        """One read request per partition, then wait for every reply up to the timeout.

        Retry rule: half way through, a silent partition's request is sent again only if it
        is lost: gone from its stream (a failover dropped it) or in a stream no live worker
        reads. A request still queued for a live worker is waited for: a copy would only
        lengthen the queue it is in, and that is how overload turns into collapse.
        """
        t0 = time.perf_counter()
        by_partition: dict[int, list[str]] = {}
        for r in ranked:
            by_partition.setdefault(r.partition, []).append(r.pid)
        ask_id = uuid.uuid4().hex[:16]
        reply_to = keys.reply_list(ask_id)
        replies: dict[int, ReadReply] = {}
        end = time.monotonic() + self.timeout_s
        sent = self._send(ask_id, question, by_partition, reply_to, self.timeout_s)
        self._wait(reply_to, replies, set(by_partition), self.timeout_s / 2)
        silent = set(by_partition) - set(replies)
        if silent:
            lost = self._lost(silent, sent)
            if lost:
                log.warning("ask %s: request(s) for partition(s) %s lost, sending again",
                            ask_id, sorted(lost))
                self._send(ask_id, question, {p: by_partition[p] for p in lost}, reply_to,
                           max(0.0, end - time.monotonic()))
            self._wait(reply_to, replies, set(by_partition), max(0.0, end - time.monotonic()))
        self.client.delete(reply_to)
        if len(replies) < len(by_partition):
            silent = sorted(set(by_partition) - set(replies))
            raise NoReply(f"no reply from the shard worker(s) of partition(s) {silent} within "
                          f"{self.timeout_s:g}s; are the workers running ('shardqa status')?")
        errors = [r.error for r in replies.values() if r.error]
        if errors:
            raise NoReply(f"a shard worker could not read: {errors[0]}")
        return list(replies.values()), _ms(t0)

    def _send(self, ask_id, question, missing, reply_to, seconds) -> dict[int, str]:
        """Partition -> the id of its request entry."""
        deadline = now_ms() + int(seconds * 1000)
        pipe = self.client.pipeline(transaction=False)
        for index, pids in missing.items():
            p = self.pmap[index]
            request = ReadRequest(ask_id, index, question, pids, reply_to, deadline,
                                  spans=MAX_N)
            pipe.xadd(keys.request_stream(p.tag), request.fields(), maxlen=100_000,
                      approximate=True)
        return {index: _text(entry_id)
                for index, entry_id in zip(missing, pipe.execute(), strict=True)}

    def _lost(self, silent: set[int], sent: dict[int, str]) -> set[int]:
        """The silent partitions whose request no live worker will read."""
        served = health.served_partitions(self.client)
        pipe = self.client.pipeline(transaction=False)
        order = sorted(silent)
        for index in order:
            pipe.xrange(keys.request_stream(self.pmap[index].tag), sent[index], sent[index])
        found = pipe.execute(raise_on_error=False)
        return {index for index, entries in zip(order, found, strict=True)
                if index not in served or not entries or isinstance(entries, Exception)}

    def _wait(self, reply_to: str, replies: dict[int, ReadReply], want: set[int],
              seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not want <= set(replies):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                got = self.client.blpop([reply_to], timeout=max(0.01, remaining))
            except redis.TimeoutError:
                return
            if got is None:
                return
            reply = ReadReply.from_json(got[1])
            replies.setdefault(reply.partition, reply)

    def settings(self, mode: str) -> tuple[float, selection.Selection]:
        """(min_rank_ratio, answer-choice rule) for a question ranked in ``mode``: the
        mode's defaults (gears.selection), a ``retrieval_weight`` given replacing its
        weight."""
        ratio = self.min_rank_ratio
        if ratio is None:
            ratio = HYBRID_MIN_RANK_RATIO if mode == "hybrid" else MIN_RANK_RATIO
        return ratio, selection.default(mode).with_weight(self.retrieval_weight)

    def _merge(self, answer: Answer, ranked: list[fusion.Fused],
               replies: list[ReadReply], rule: selection.Selection) -> None:
        read = [span for reply in replies for span in reply.spans]
        answer.batch_sizes = sorted(r.batch_requests for r in replies)
        spans = [span for span in read if not span.null]
        if read and not spans:
            answer.reason = (f"the reader found no answer in the {len(read)} passage"
                             f"{'s' if len(read) > 1 else ''} it read")
        if not spans:
            return
        top = max(r.score for r in ranked)
        feature = {r.pid: rule.feature(r, position, top)
                   for position, r in enumerate(ranked, start=1)}
        found = sorted(((rule.score(raw, feature.get(s.pid, 0.0)), s.pid, start, end, text)
                        for s in spans for start, end, text, raw in s.all_spans()),
                       key=lambda c: (-c[0], c[1], c[2], c[3]))
        chosen = rule.answers([c[0] for c in found], [normalize_answer(c[4]) for c in found])
        answer.answers = distinct_answers(found, chosen, MAX_N)
        first = answer.answers[0]
        answer.answer, answer.score, answer.confidence = first.answer, first.score, \
            first.confidence
        answer.start, answer.end, answer.passage_id = first.start, first.end, first.passage_id
        self._fetch_passages(answer)

    def _fetch_passages(self, answer: Answer) -> None:
        """Title and text of the answer's passage and of its other answers' (one pipelined
        round trip per master)."""
        pids = list(dict.fromkeys(a.passage_id for a in answer.answers))
        pipe = self.client.pipeline(transaction=False)
        for pid in pids:
            pipe.hmget(keys.passage(self.pmap.for_passage(pid).tag, pid), ["title", "text"])
        found = {pid: {"title": _decoded(title), "text": _decoded(text)}
                 for pid, (title, text) in zip(pids, pipe.execute(), strict=True)}
        own = found.pop(answer.passage_id)
        answer.title, answer.passage_text = own["title"], own["text"]
        answer.passages = found


def distinct_answers(found: list[tuple], chosen: list[tuple[int, float]], count: int
                     ) -> list[AnswerSpan]:
    """The ``count`` best answers: the first is the answer whatever its text; the others are
    distinct answers (selection.Selection.answers: one per text under SQuAD normalisation,
    "Gustave Eiffel" and "gustave Eiffel." are one) whose text is not empty once normalised
    ("the", "."). ``found``: the candidates (score, passage, start, end, text)."""
    out: list[AnswerSpan] = []
    for index, confidence in chosen:
        if len(out) == count:
            break
        score, pid, start, end, text = found[index]
        if out and not normalize_answer(text):
            continue
        out.append(AnswerSpan(text, score, pid, start, end, confidence))
    return out


class _Flight:
    """One question being answered; other threads asking it wait here for the answer."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._answer: Answer | None = None
        self._error: BaseException | None = None

    def done(self, answer: Answer) -> None:
        self._answer = answer
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    def wait(self, timeout: float) -> Answer:
        if not self._event.wait(timeout):
            raise NoReply(f"no answer within {timeout:g}s (waiting for the same question)")
        if self._error is not None:
            if isinstance(self._error, ShardqaError):
                raise type(self._error)(str(self._error))
            raise self._error
        return Answer.from_json(self._answer.to_json())  # a copy per caller


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _compact(data) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _decoded(value: bytes | None) -> str | None:
    return value.decode("utf-8") if value is not None else None


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)
