"""The shard protocol: what an asker puts on a partition's request stream, what comes back.

A read request names the question and the passages of one partition to read; the shard
worker that owns the partition replies on the request's reply list with the best span of
every passage (and, when the request asks for ``spans`` > 1, the passage's next distinct
spans in ``more``). Both sides import this module; nothing else knows the field names.

Versions mix during an upgrade: a request without ``spans`` asks for one span a passage,
a reply without ``more`` has none, ``more`` is only sent to a request that asked for it, and
fields a newer peer adds are ignored.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields

#: spans a request may ask for per passage (the best and the next distinct ones)
MAX_SPANS = 10


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
    #: spans wanted per passage: the best, then up to spans - 1 distinct others
    spans: int = 1

    def fields(self) -> dict[str, str]:
        return {
            "ask": self.ask_id, "partition": str(self.partition), "q": self.question,
            "pids": ",".join(self.pids), "reply": self.reply_to,
            "deadline": str(self.deadline_ms), "enqueued": str(self.enqueued_ms),
            "spans": str(self.spans),
        }

    @classmethod
    def from_fields(cls, raw: dict) -> ReadRequest:
        f = {_text(k): _text(v) for k, v in raw.items()}
        return cls(
            ask_id=f["ask"], partition=int(f["partition"]), question=f["q"],
            pids=[p for p in f["pids"].split(",") if p], reply_to=f["reply"],
            deadline_ms=int(f["deadline"]), enqueued_ms=int(f["enqueued"]),
            spans=int(f.get("spans", 1)),
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
    #: the passage's next distinct spans, best first: [start, end, text, score] each
    more: list[list] = field(default_factory=list)

    def all_spans(self) -> list[tuple[int, int, str, float]]:
        """(start, end, text, score) of this span, then of the passage's next ones."""
        return [(self.start, self.end, self.text, self.score),
                *((int(a), int(b), str(t), float(s)) for a, b, t, s in self.more)]


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
        data = asdict(self)
        for span in data["spans"]:
            if not span["more"]:  # what a reply was before ``more``: older askers read it
                del span["more"]
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> ReadReply:
        data = _known(cls, json.loads(raw))
        data["spans"] = [SpanReply(**_known(SpanReply, s)) for s in data.get("spans", [])]
        return cls(**data)


def _known(cls, data: dict) -> dict:
    """The fields ``cls`` has (a newer peer's extra fields are ignored)."""
    names = {f.name for f in dataclass_fields(cls)}
    return {k: v for k, v in data.items() if k in names}
