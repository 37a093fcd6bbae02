"""The thin Flask QA API: validation, JSON errors, /health, Prometheus /metrics, /openapi.json.

All the work is ``gears.asker.Asker.ask``; this module only speaks HTTP. Every error is a
JSON body ``{"error": {"status", "message"}}`` with a 4xx/5xx status, never an HTML page
or a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections import deque

import redis
from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException

from api import page
from api.openapi import spec
from api.question_log import QuestionLog
from api.settings import ServeSettings
from cluster import heartbeat
from cluster.errors import ShardqaError
from gears import health
from gears.asker import (
    DEFAULT_K,
    DEFAULT_N,
    MAX_K,
    MAX_N,
    Asker,
    QuestionError,
    check_min_confidence,
)

log = logging.getLogger("shardqa.api")

MAX_BODY_BYTES = 16 * 1024
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.08, 0.1, 0.2,
                   0.5, 1, 2, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("shardqa_requests", "HTTP requests", ["endpoint", "status"],
                                registry=self.registry)
        self.cache = Counter("shardqa_cache", "answer cache lookups", ["result"],
                             registry=self.registry)
        self.latency = Histogram("shardqa_ask_latency_seconds", "ask latency", ["cached"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage = Histogram("shardqa_stage_latency_seconds", "uncached ask stages",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch = Histogram("shardqa_worker_batch_requests",
                               "requests in the shard batch that read each question",
                               buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
                               registry=self.registry)


#: wrong bearer tokens a client address may send per minute before it gets 429 for a while
WRONG_TOKENS_PER_MINUTE = 10
#: workers whose last heartbeat is older than this many stale periods leave /health
FORGET_WORKER_AFTER_STALE = 10


class RateLimiter:
    """At most ``limit`` hits per client address in a sliding ``window_s``; ``limit`` <= 0
    disables it. Clients idle for a window are forgotten (at most once a window, all in
    one sweep), so memory follows the active clients, not every address ever seen."""

    def __init__(self, limit: float, window_s: float = 1.0, clock=time.monotonic):
        self.per_second = limit / window_s
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._hits: dict[str, deque] = {}
        self._lock = threading.Lock()
        self._swept = clock()

    def __len__(self) -> int:
        return len(self._hits)

    def allow(self, client: str) -> bool:
        """Count a hit unless the client is over the limit (then False)."""
        if self.limit <= 0:
            return True
        with self._lock:
            now = self._clock()
            hits = self._recent(client, now)
            if len(hits) >= self.limit:
                return False
            hits.append(now)
            return True

    def exceeded(self, client: str) -> bool:
        """Over the limit now, without counting a hit."""
        if self.limit <= 0:
            return False
        with self._lock:
            return len(self._recent(client, self._clock())) >= self.limit

    def _recent(self, client: str, now: float) -> deque:
        if now - self._swept > self.window_s:
            self._swept = now
            for name in [c for c, h in self._hits.items() if now - h[-1] > self.window_s]:
                del self._hits[name]
        hits = self._hits.setdefault(client, deque())
        while hits and now - hits[0] > self.window_s:
            hits.popleft()
        return hits


def json_response(body, status: int = 200) -> Response:
    """Compact JSON, keys in the order written: Flask's jsonify sorts and indents-checks
    every key, a third of the app's own time on a cached answer."""
    return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")),
                    status=status, mimetype="application/json")


def error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"status": status, "message": message}}), status


def create_app(asker: Asker, *, token: str | None = None, rate_limit: float = 0.0,
               max_uncached: int = ServeSettings().max_uncached(ServeSettings.threads)
               ) -> Flask:
    """The API. At most ``max_uncached`` questions are read from the shards at once; more
    get 503 at once, so cached answers and /health always find a free thread."""
    app = Flask("shardqa")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    metrics = Metrics()
    limiter = RateLimiter(rate_limit)
    wrong_tokens = RateLimiter(WRONG_TOKENS_PER_MINUTE, window_s=60.0)
    uncached = threading.BoundedSemaphore(max_uncached)
    app.extensions.update(shardqa_metrics=metrics, shardqa_limiter=limiter,
                          shardqa_wrong_tokens=wrong_tokens, shardqa_uncached=uncached)
    question_log = QuestionLog(app, asker.client, metrics.registry, token=token)  # records/
    _guard(app, token, limiter, wrong_tokens)
    _count_requests(app, metrics)
    _error_handlers(app)
    _qa_routes(app, _Answerer(asker, metrics, question_log, uncached, max_uncached))
    app.register_blueprint(page.page)
    _health_route(app, asker)
    _metrics_routes(app, metrics)
    return app


def _guard(app: Flask, token: str | None, limiter: RateLimiter,
           wrong_tokens: RateLimiter) -> None:
    """Bearer token and rate limit on every path but health, metrics, spec and the page."""

    @app.before_request
    def guard():
        if request.path in ("/health", "/metrics", "/openapi.json", *page.PATHS):
            return None
        client = request.remote_addr or "?"
        if token:
            if wrong_tokens.exceeded(client):
                return error(429, "too many wrong bearer tokens from this address; wait a "
                             "minute")
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                wrong_tokens.allow(client)
                return error(401, "missing or wrong bearer token")
        if not limiter.allow(client):
            return error(429, f"rate limit of {limiter.per_second:g} requests/s exceeded")
        return None


def _count_requests(app: Flask, metrics: Metrics) -> None:
    @app.after_request
    def count(response):
        metrics.requests.labels(request.url_rule.rule if request.url_rule else "other",
                                str(response.status_code)).inc()
        return response


def _error_handlers(app: Flask) -> None:
    """Every error becomes a JSON body, never an HTML page or a traceback."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(ShardqaError)
    def shardqa_error(exc: ShardqaError):
        return error(exc.http_status, str(exc))

    @app.errorhandler(redis.RedisError)
    def redis_error(exc: redis.RedisError):
        log.warning("redis error: %s", exc)
        return error(503, f"the Redis Cluster is unavailable: {type(exc).__name__}")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unexpected error")
        return error(500, "internal error")


class _Answerer:
    """Answers one question: the cache first, then at most ``max_uncached`` shard reads at
    once; observes the latency metrics and logs the question."""

    def __init__(self, asker: Asker, metrics: Metrics, question_log: QuestionLog,
                 uncached: threading.BoundedSemaphore, max_uncached: int) -> None:
        self.asker = asker
        self.metrics = metrics
        self.question_log = question_log
        self.uncached = uncached
        self.max_uncached = max_uncached
        # the cached path's metric children, looked up once
        self.cache_hits = metrics.cache.labels("hit")
        self.cache_misses = metrics.cache.labels("miss")
        self.hit_latency = metrics.latency.labels("true")
        self.miss_latency = metrics.latency.labels("false")

    def answer(self, question, k, n=DEFAULT_N, min_confidence=None) -> Response:
        """``min_confidence``: the request's (None: the server's, ``--min-confidence``)."""
        t0 = time.perf_counter()
        result = (self.asker.cached(question, k, n, min_confidence=min_confidence)
                  or self.read(question, k, n, min_confidence))
        elapsed = time.perf_counter() - t0
        self.question_log.answered(result)
        if result.cached:
            self.cache_hits.inc()
            self.hit_latency.observe(elapsed)
            return json_response(result.public(n))
        self.cache_misses.inc()
        self.miss_latency.observe(elapsed)
        for stage in ("embed", "rank", "wait", "queue", "read"):
            if stage in result.timings_ms:
                self.metrics.stage.labels(stage).observe(result.timings_ms[stage] / 1000)
        for size in result.batch_sizes:
            self.metrics.batch.observe(size)
        return json_response(result.public(n))

    def read(self, question, k, n, min_confidence=None):
        if not self.uncached.acquire(blocking=False):
            raise ShardqaError(f"busy: {self.max_uncached} uncached questions are being read; "
                               "retry in a moment", http_status=503)
        try:
            return self.asker.ask(question, k, n, min_confidence=min_confidence)
        finally:
            self.uncached.release()


def _parse_int(name: str, raw: str, most: int) -> int:
    """A query parameter's integer (its range is the asker's to check)."""
    try:
        return int(raw)
    except ValueError:
        raise QuestionError(f"{name} must be an integer from 1 to {most}") from None


def _body_min_confidence(body: dict) -> float | None:
    """POST's ``min_confidence``: absent, None (the server's applies); else a JSON number
    from 0 to 1 (a string or null is a 400, as for ``n``)."""
    if "min_confidence" not in body:
        return None
    return check_min_confidence(body["min_confidence"], json_field=True)


def _qa_routes(app: Flask, answerer: _Answerer) -> None:
    """GET /qa?q=...&k=...&n=...&min_confidence=... and POST /qa with a JSON body."""

    @app.get("/qa")
    def qa_get():
        question = request.args.get("q")
        if question is None:
            raise QuestionError("missing query parameter q")
        return answerer.answer(
            question, _parse_int("k", request.args.get("k", str(DEFAULT_K)), MAX_K),
            _parse_int("n", request.args.get("n", str(DEFAULT_N)), MAX_N),
            check_min_confidence(request.args.get("min_confidence")))

    @app.post("/qa")
    def qa_post():
        if not request.is_json:
            return error(415, "the body must be JSON (Content-Type: application/json)")
        try:
            body = request.get_json(silent=True)
        except RecursionError:
            raise QuestionError("the JSON body is nested too deeply") from None
        if not isinstance(body, dict):
            raise QuestionError("the body must be a JSON object with a 'question' field")
        if "question" not in body:
            raise QuestionError("missing field 'question'")
        return answerer.answer(body["question"], body.get("k", DEFAULT_K),
                               body.get("n", DEFAULT_N), _body_min_confidence(body))


def _health_route(app: Flask, asker: Asker) -> None:
    @app.get("/health")
    def health_check():
        try:
            report = health.status(asker.client)
        except (redis.RedisError, ShardqaError) as exc:
            return jsonify({"status": "down", "problems": [str(exc)]}), 503
        problems = health.problems(report)
        body = {
            "status": "ok" if not problems else "degraded", "problems": problems,
            "generation": report["generation"],
            "workers": [{"id": w["id"], "age_s": round(w["age_s"], 2),
                         "partitions": w.get("partitions", []), "model": w.get("model")}
                        for w in report["workers"]
                        if w["age_s"] <= FORGET_WORKER_AFTER_STALE * heartbeat.stale_s()],
            "passages": sum(p["passages"] for p in report["partitions"]),
            "retrieval": report["retrieval"],
        }
        return jsonify(body), 200 if not problems else 503


def _metrics_routes(app: Flask, metrics: Metrics) -> None:
    """/metrics for Prometheus and /openapi.json."""

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    def openapi():
        return jsonify(spec())
