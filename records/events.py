"""The log's record format: one stream entry per answered question or feedback.

An entry has four fields: ``kind`` (question | feedback), ``id`` (a uuid made when the event
happens: the stable key the SQL upsert deduplicates on, whatever number of times the entry
is delivered), ``at`` (Unix time) and ``body`` (JSON). Feedback from outside is validated
here, so the API and any other writer reject the same things.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass

from cluster.errors import ShardqaError

KINDS = ("question", "feedback")
VERDICTS = ("right", "wrong")
#: The longest question, answer or correct answer feedback may carry.
MAX_FEEDBACK_CHARS = 2000


class FeedbackError(ShardqaError):
    """A feedback body that cannot be recorded."""

    http_status = 400
    exit_code = 2


class MalformedEvent(ValueError):
    """A stream entry that is not one of ours (or was trimmed while pending)."""


@dataclass(frozen=True)
class Event:
    kind: str
    event_id: str
    at: float
    body: dict

    def fields(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.event_id, "at": repr(self.at),
                "body": json.dumps(self.body, ensure_ascii=False, separators=(",", ":"))}

    @classmethod
    def from_fields(cls, raw: dict | None) -> Event:
        f = {_text(k): _text(v) for k, v in (raw or {}).items()}
        try:
            body = json.loads(f["body"])
            event = cls(f["kind"], f["id"], float(f["at"]), body)
        except (KeyError, ValueError, TypeError) as exc:
            raise MalformedEvent(f"not a log event: {exc}") from None
        if event.kind not in KINDS or not isinstance(body, dict) or not event.event_id:
            raise MalformedEvent(f"not a log event: kind {event.kind!r}")
        return event


def client_id(bearer_token: str | None) -> str | None:
    """Who asked, without storing the secret: a short hash of the bearer token."""
    if not bearer_token:
        return None
    return hashlib.sha256(bearer_token.encode("utf-8")).hexdigest()[:16]


def question_event(*, question: str, answer: str | None, passage_id: str | None,
                   score: float | None, k: int, cached: bool, generation: int,
                   timings_ms: dict[str, float], client: str | None) -> Event:
    body = {"question": question, "answer": answer, "passage_id": passage_id, "score": score,
            "k": k, "cached": cached, "generation": generation, "timings_ms": timings_ms,
            "client": client}
    return Event("question", uuid.uuid4().hex, time.time(), body)


def feedback_event(body, client: str | None) -> Event:
    """Validate ``{question, answer, verdict: right|wrong, correct_answer?}``."""
    if not isinstance(body, dict):
        raise FeedbackError("the body must be a JSON object with question, answer and verdict")
    unknown = sorted(set(body) - {"question", "answer", "verdict", "correct_answer"})
    if unknown:
        raise FeedbackError(f"unknown field(s): {', '.join(unknown)}")
    question = _text_field(body, "question", required=True)
    answer = _text_field(body, "answer", required=False, allow_empty=True)
    if "answer" not in body:
        raise FeedbackError("missing field 'answer' (null if there was none)")
    verdict = body.get("verdict")
    if verdict not in VERDICTS:
        raise FeedbackError(f"verdict must be one of {', '.join(VERDICTS)}")
    correct = _text_field(body, "correct_answer", required=False)
    if correct is not None and verdict != "wrong":
        raise FeedbackError("correct_answer goes with verdict 'wrong' only")
    return Event("feedback", uuid.uuid4().hex, time.time(),
                 {"question": question, "answer": answer, "verdict": verdict,
                  "correct_answer": correct, "client": client})


def _text_field(body: dict, name: str, *, required: bool, allow_empty: bool = False
                ) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise FeedbackError(f"missing field {name!r}")
        return None
    if not isinstance(value, str):
        raise FeedbackError(f"{name} must be a string")
    value = " ".join(value.split())
    if not value and not allow_empty:
        raise FeedbackError(f"{name} is empty")
    if len(value) > MAX_FEEDBACK_CHARS:
        raise FeedbackError(f"{name} is longer than {MAX_FEEDBACK_CHARS} characters")
    return value


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
