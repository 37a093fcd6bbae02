"""The shard protocol: what an asker puts on a partition's request stream, what comes back.

A read request names the question and the passages of one partition to read; the shard
worker that owns the partition replies on the request's reply list with the best span of
every passage. Both sides import this module; nothing else knows the field names.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field


def now_ms() -> int:
    return int(time.time() * 1000)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclass
class ReadRequest:
    ask_id: str
    partition: int
    question: str
    pids: list[str]
    reply_to: str
    deadline_ms: int
    enqueued_ms: int = field(default_factory=now_ms)

    def fields(self) -> dict[str, str]:
        return {
            "ask": self.ask_id, "partition": str(self.partition), "q": self.question,
            "pids": ",".join(self.pids), "reply": self.reply_to,
            "deadline": str(self.deadline_ms), "enqueued": str(self.enqueued_ms),
        }

    @classmethod
    def from_fields(cls, raw: dict) -> ReadRequest:
        f = {_text(k): _text(v) for k, v in raw.items()}
        return cls(
            ask_id=f["ask"], partition=int(f["partition"]), question=f["q"],
            pids=[p for p in f["pids"].split(",") if p], reply_to=f["reply"],
            deadline_ms=int(f["deadline"]), enqueued_ms=int(f["enqueued"]),
        )

    def expired(self, at_ms: int | None = None) -> bool:
        return (at_ms or now_ms()) > self.deadline_ms


@dataclass
class SpanReply:
    pid: str
    start: int
    end: int
    text: str
    score: float
    null: bool = False  # the reader's null threshold says the passage holds no answer
    log_z: float | None = None  # log sum exp(score / temperature) over the passage's spans
    temperature: float = 1.0


@dataclass
class ReadReply:
    ask_id: str
    partition: int
    worker: str
    spans: list[SpanReply]
    batch_requests: int = 1
    batch_pairs: int = 0
    queue_ms: float = 0.0
    read_ms: float = 0.0
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> ReadReply:
        data = json.loads(raw)
        data["spans"] = [SpanReply(**s) for s in data.get("spans", [])]
        return cls(**data)
