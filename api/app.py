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
from collections import defaultdict, deque

import redis
from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException

from api.openapi import spec
from api.question_log import QuestionLog
from cluster.errors import ShardqaError
from gears import health
from gears.asker import MAX_K, Asker, QuestionError

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


class RateLimiter:
    """Sliding one-second window per client address; ``per_second`` <= 0 disables it."""

    def __init__(self, per_second: float):
        self.per_second = per_second
        self._hits: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        if self.per_second <= 0:
            return True
        now = time.monotonic()
        with self._lock:
            hits = self._hits[client]
            while hits and now - hits[0] > 1.0:
                hits.popleft()
            if len(hits) >= self.per_second:
                return False
            hits.append(now)
            return True


def json_response(body, status: int = 200) -> Response:
    """Compact JSON, keys in the order written: Flask's jsonify sorts and indents-checks
    every key, a third of the app's own time on a cached answer."""
    return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")),
                    status=status, mimetype="application/json")


def error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"status": status, "message": message}}), status


def create_app(asker: Asker, *, token: str | None = None, rate_limit: float = 0.0) -> Flask:
    app = Flask("shardqa")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    metrics = Metrics()
    # the cached path's metric children, looked up once
    cache_hits, cache_misses = metrics.cache.labels("hit"), metrics.cache.labels("miss")
    hit_latency, miss_latency = metrics.latency.labels("true"), metrics.latency.labels("false")
    limiter = RateLimiter(rate_limit)
    app.extensions["shardqa_metrics"] = metrics
    question_log = QuestionLog(app, asker.client, metrics.registry, token=token)  # records/

    @app.before_request
    def guard():
        if request.path in ("/health", "/metrics", "/openapi.json"):
            return None
        if token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error(401, "missing or wrong bearer token")
        if not limiter.allow(request.remote_addr or "?"):
            return error(429, f"rate limit of {limiter.per_second:g} requests/s exceeded")
        return None

    @app.after_request
    def count(response):
        metrics.requests.labels(request.url_rule.rule if request.url_rule else "other",
                                str(response.status_code)).inc()
        return response

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

    @app.get("/qa")
    def qa_get():
        question = request.args.get("q")
        if question is None:
            raise QuestionError("missing query parameter q")
        return answer(question, parse_k(request.args.get("k", "5")))

    @app.post("/qa")
    def qa_post():
        if not request.is_json:
            return error(415, "the body must be JSON (Content-Type: application/json)")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise QuestionError("the body must be a JSON object with a 'question' field")
        if "question" not in body:
            raise QuestionError("missing field 'question'")
        return answer(body["question"], body.get("k", 5))

    def parse_k(raw: str) -> int:
        try:
            return int(raw)
        except ValueError:
            raise QuestionError(f"k must be an integer from 1 to {MAX_K}") from None

    def answer(question, k):
        t0 = time.perf_counter()
        result = asker.ask(question, k)
        elapsed = time.perf_counter() - t0
        question_log.answered(result)
        if result.cached:
            cache_hits.inc()
            hit_latency.observe(elapsed)
            return json_response(result.public())
        cache_misses.inc()
        miss_latency.observe(elapsed)
        for stage in ("rank", "wait", "queue", "read"):
            if stage in result.timings_ms:
                metrics.stage.labels(stage).observe(result.timings_ms[stage] / 1000)
        for size in result.batch_sizes:
            metrics.batch.observe(size)
        return json_response(result.public())

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
                        for w in report["workers"]],
            "passages": sum(p["passages"] for p in report["partitions"]),
        }
        return jsonify(body), 200 if not problems else 503

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    def openapi():
        return jsonify(spec())

    return app
