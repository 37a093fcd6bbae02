"""The API's part of the database of record: log each answer, take ``POST /feedback``, and
show the log's size and lag on /metrics.

Logging is fire-and-forget (records.log.EventLog): the answer never waits for it and never
fails because of it. The client is a hash of the bearer token when the API requires one.
"""

from __future__ import annotations

import logging

import redis
from flask import Flask, request
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from records.events import client_id, feedback_event, question_event
from records.log import EventLog, log_state
from records.settings import RecordSettings

log = logging.getLogger("shardqa.api")


class QuestionLog:
    """Installs /feedback and the log gauges on ``app``; ``answered`` logs one answer."""

    def __init__(self, app: Flask, client, registry: CollectorRegistry, *,
                 token: str | None, settings: RecordSettings | None = None):
        settings = settings or RecordSettings.from_env()
        self.events = EventLog(client, maxlen=settings.stream_maxlen,
                               buffer_events=settings.buffer_events)
        self.token = token
        self.feedbacks = Counter("shardqa_feedback", "feedback received", ["verdict"],
                                 registry=registry)
        registry.register(_LogCollector(client, self.events, settings.stream_maxlen))
        app.extensions["shardqa_question_log"] = self
        app.add_url_rule("/feedback", "feedback", self._feedback, methods=["POST"])

    def answered(self, result) -> None:
        """Log an answer (a gears.asker.Answer); never raises."""
        try:
            self.events.put(question_event(
                question=result.question, answer=result.answer, passage_id=result.passage_id,
                score=result.score, k=result.k, cached=result.cached,
                generation=result.generation, timings_ms=result.timings_ms,
                client=self._client()))
        except Exception:  # noqa: BLE001 - logging must never cost the answer
            log.exception("could not log an answer")

    def _client(self) -> str | None:
        if not self.token:
            return None
        return client_id(request.headers.get("Authorization", "").removeprefix("Bearer "))

    def _feedback(self):
        from api.app import error, json_response

        if not request.is_json:
            return error(415, "the body must be JSON (Content-Type: application/json)")
        event = feedback_event(request.get_json(silent=True), self._client())
        self.events.put(event)
        self.feedbacks.labels(event.body["verdict"]).inc()
        return json_response({"status": "accepted", "id": event.event_id}, 202)


class _LogCollector:
    """Read at scrape time: the stream's length and cap, entries not in SQL yet, drops."""

    def __init__(self, client, events: EventLog, maxlen: int):
        self.client, self.events, self.maxlen = client, events, maxlen

    def collect(self):
        dropped = GaugeMetricFamily("shardqa_log_dropped", "log events this API process "
                                    "dropped because Redis refused them")
        dropped.add_metric([], self.events.dropped)
        yield dropped
        try:
            state = log_state(self.client)
        except (redis.RedisError, OSError):
            return
        for name, doc, value in (
                ("shardqa_log_length", "entries in the question log stream", state.length),
                ("shardqa_log_maxlen", "the stream's bound (MAXLEN ~); at it the oldest "
                 "entries are trimmed, synced or not", self.maxlen),
                ("shardqa_log_lag", "log entries not yet written to SQL by shardqa sync",
                 state.unsynced)):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], value)
            yield gauge
