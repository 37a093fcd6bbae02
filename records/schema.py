"""The SQL side: tables ``questions`` and ``feedback`` and the idempotent batch upsert.

Each row is keyed by its event's uuid (``event_id``), so a stream entry written twice (the
sync job died between COMMIT and XACK, and the entry was delivered again) stays one row:
INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL, a read-then-insert elsewhere.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from records.events import Event

metadata = MetaData()

questions = Table(
    "questions", metadata,
    Column("event_id", String(32), primary_key=True),
    Column("asked_at", DateTime(timezone=True), nullable=False, index=True),
    Column("question", Text, nullable=False),
    Column("answer", Text),
    Column("passage_id", String(64)),
    Column("score", Float),
    Column("k", Integer),
    Column("cached", Boolean),
    Column("generation", Integer),
    Column("total_ms", Float),
    Column("rank_ms", Float),
    Column("wait_ms", Float),
    Column("queue_ms", Float),
    Column("read_ms", Float),
    Column("timings", JSON),
    Column("client", String(64)),
    Column("stream_id", String(40)),
)

feedback = Table(
    "feedback", metadata,
    Column("event_id", String(32), primary_key=True),
    Column("given_at", DateTime(timezone=True), nullable=False, index=True),
    Column("question", Text, nullable=False),
    Column("answer", Text),
    Column("verdict", String(8), nullable=False),
    Column("correct_answer", Text),
    Column("client", String(64)),
    Column("stream_id", String(40)),
)

_STAGES = ("total", "rank", "wait", "queue", "read")


def open_engine(url: str) -> Engine:
    """An engine that checks a pooled connection before use (the database may have
    restarted since) and does not log; tables are created by ``create_tables``."""
    return create_engine(url, pool_pre_ping=True)


def create_tables(engine: Engine) -> None:
    metadata.create_all(engine)


def row(event: Event, stream_id: str) -> tuple[Table, dict]:
    """The table and row one event becomes."""
    b = event.body
    at = datetime.fromtimestamp(event.at, UTC)
    if event.kind == "feedback":
        return feedback, {
            "event_id": event.event_id, "given_at": at, "question": b.get("question") or "",
            "answer": b.get("answer"), "verdict": b.get("verdict") or "",
            "correct_answer": b.get("correct_answer"), "client": b.get("client"),
            "stream_id": stream_id}
    timings = b.get("timings_ms") or {}
    return questions, {
        "event_id": event.event_id, "asked_at": at, "question": b.get("question") or "",
        "answer": b.get("answer"), "passage_id": b.get("passage_id"), "score": b.get("score"),
        "k": b.get("k"), "cached": bool(b.get("cached")), "generation": b.get("generation"),
        **{f"{stage}_ms": timings.get(stage) for stage in _STAGES},
        "timings": timings, "client": b.get("client"), "stream_id": stream_id}


def upsert(conn, table: Table, rows: list[dict]) -> None:
    """Insert the rows whose event_id is not in the table yet (one statement per batch)."""
    if not rows:
        return
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        insert = sqlite.insert if name == "sqlite" else postgresql.insert
        conn.execute(insert(table).on_conflict_do_nothing(index_elements=["event_id"]), rows)
        return
    ids = [r["event_id"] for r in rows]
    known = set(conn.scalars(select(table.c.event_id).where(table.c.event_id.in_(ids))))
    fresh = [r for r in rows if r["event_id"] not in known]
    if fresh:
        conn.execute(table.insert(), fresh)


def most_asked(engine: Engine, limit: int) -> list[tuple[str, int]]:
    """The logged questions, most asked first (then alphabetically): real traffic to replay.
    Questions differing only in case are one question (the answer cache folds case too)."""
    from sqlalchemy import func

    folded = func.lower(questions.c.question)
    statement = (select(func.min(questions.c.question), func.count())
                 .group_by(folded).order_by(func.count().desc(), folded).limit(limit))
    with engine.connect() as conn:
        return [(q, int(n)) for q, n in conn.execute(statement)]
