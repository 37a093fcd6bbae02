"""The Python API: ask, ingest and inspect a shardqa cluster from a program.

    import shardqa
    with shardqa.connect(dir=".shardqa/cluster") as qa:      # or connect("redis://...")
        qa.ingest([{"id": "eiffel", "title": "Eiffel Tower", "text": "..."}])
        answer = qa.ask("Who designed the Eiffel Tower?", k=5, n=3)
        print(answer.answer, answer.passage.title, answer.score)
        for other in answer.answers[1:]:                     # the next distinct answers
            print(other.answer, other.passage.title, other.score)

No HTTP and no CLI in between: the same ``Asker`` the API serves with, the loaders' own
validation and ``IngestReport``, the same health report as ``shardqa status``. ``shardqa
ask`` is built on it. ``connect(..., min_confidence=0.5)`` (or ``ask(...,
min_confidence=0.5)``) makes an answer shown below that confidence None, with a ``reason``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cluster.connection import Target
from cluster.connection import connect as connect_cluster
from cluster.errors import ShardqaError

#: the fields of the API's answer body that Answer names; every other one goes to ``extra``
_NAMED = ("question", "answer", "score", "passage", "start", "end", "cached", "timings_ms",
          "reason", "confidence", "answers")


@dataclass(frozen=True)
class Passage:
    id: str
    title: str | None
    text: str | None


@dataclass(frozen=True)
class AnswerSpan:
    """One of a question's answers (``Answer.answers``): a span of a passage.
    ``passage.text[start:end] == answer``."""

    answer: str
    score: float
    passage: Passage
    start: int
    end: int
    #: its probability among the candidate spans of all passages read
    confidence: float | None = None
    #: how its passage was found, as ``Answer.retrieval``
    retrieval: Mapping[str, Any] | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AnswerSpan:
        return cls(answer=body["answer"], score=body["score"],
                   passage=_passage(body["passage"]), start=body["start"], end=body["end"],
                   confidence=body.get("confidence"), retrieval=body.get("retrieval"))

    def to_dict(self) -> dict:
        """The item of the API's ``answers`` list."""
        return {"answer": self.answer, "score": self.score,
                **({"confidence": self.confidence} if self.confidence is not None else {}),
                "passage": _passage_dict(self.passage), "start": self.start, "end": self.end,
                **({"retrieval": self.retrieval} if self.retrieval is not None else {})}


@dataclass(frozen=True)
class Answer:
    """One answer, as the API's JSON body has it (``gears.asker.Answer.public``).

    Fields the body has beyond the named ones (``k``, ``generation``, ``passages_read``,
    and whatever newer servers add, such as ``retrieval``) are in ``extra`` and readable
    as attributes: ``answer.retrieval``.
    """

    question: str
    answer: str | None
    score: float | None
    passage: Passage | None
    start: int | None
    end: int | None
    cached: bool
    timings: Mapping[str, float]
    extra: Mapping[str, Any]
    #: why ``answer`` is None although passages were read (the reader said "no answer")
    reason: str | None = None
    #: the answer's probability among the candidate spans of all passages read
    confidence: float | None = None
    #: with ``ask(..., n=N)``, N > 1: the N best distinct answers (fewer if the passages
    #: read hold fewer), best first, the first being this answer; () with n=1
    answers: tuple[AnswerSpan, ...] = ()

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Answer:
        return cls(
            question=body["question"], answer=body.get("answer"), score=body.get("score"),
            passage=_passage(body.get("passage")),
            start=body.get("start"), end=body.get("end"), cached=bool(body.get("cached")),
            timings=MappingProxyType(dict(body.get("timings_ms") or {})),
            extra=MappingProxyType({k: v for k, v in body.items() if k not in _NAMED}),
            reason=body.get("reason"), confidence=body.get("confidence"),
            answers=tuple(AnswerSpan.from_body(a) for a in body.get("answers") or ()),
        )

    def to_dict(self) -> dict:
        """The API's JSON body again, every field the server sent included (``answers``
        when there are several)."""
        return {"question": self.question, "answer": self.answer, "score": self.score,
                "passage": _passage_dict(self.passage),
                "start": self.start, "end": self.end, "cached": self.cached,
                **({"reason": self.reason} if self.reason is not None else {}),
                **({"confidence": self.confidence} if self.confidence is not None else {}),
                **({"answers": [a.to_dict() for a in self.answers]} if self.answers else {}),
                **self.extra, "timings_ms": dict(self.timings)}

    def __getattr__(self, name: str) -> Any:
        # only reached for names that are not fields
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")


def _passage(body: Mapping[str, Any] | None) -> Passage | None:
    return Passage(body["id"], body.get("title"), body.get("text")) if body else None


def _passage_dict(passage: Passage | None) -> dict | None:
    if passage is None:
        return None
    return {"id": passage.id, "title": passage.title, "text": passage.text}


class Client:
    """A connection to one cluster; thread-safe for ``ask``. Close it (or use ``with``)."""

    def __init__(self, target: Target, *, timeout: float = 10.0,
                 min_confidence: float | None = None):
        from gears.asker import check_min_confidence

        self.target = target
        self.timeout = timeout
        self.min_confidence = check_min_confidence(min_confidence)
        self._clients: dict[str, Any] = {}
        self._asker = None

    def _client(self, command: str):
        """The cluster client for a command, as the ACL user that command runs as."""
        from cluster.options import COMMAND_ROLES

        role = COMMAND_ROLES.get(command, "admin")
        if role not in self._clients:
            self._clients[role] = connect_cluster(self.target.as_role(role))
        return self._clients[role]

    def ask(self, question: str, k: int = 5, n: int = 1, *, use_cache: bool = True,
            min_confidence: float | None = None) -> Answer:
        """The best answer in the corpus from ``k`` passages, with the ``n`` best distinct
        answers in ``answers`` when n > 1; raises QuestionError for an unusable question
        (or a k out of 1-50, an n out of 1-10, a min_confidence out of 0-1). Below
        ``min_confidence`` (None: the client's; 0: off) the answer is None with a
        ``reason``."""
        from gears.asker import Asker

        if self._asker is None:
            self._asker = Asker(self._client("ask"), timeout_s=self.timeout,
                                min_confidence=self.min_confidence)
        answer = self._asker.ask(question, k, n, use_cache=use_cache,
                                 min_confidence=min_confidence)
        return Answer.from_body(answer.public(n))

    def ingest(self, documents: Iterable | str | os.PathLike, *, fmt: str = "auto",
               on_error: str = "skip", wait: bool = True, timeout: float = 600,
               batch_size: int = 500):
        """Write documents (dicts ``{"id", "title", "text"}``, loaders ``Document``s, or
        paths of files/folders any ``shardqa ingest`` format reads) into the cluster.

        Malformed records are counted in the returned ``IngestReport.errors``
        (``on_error="skip"``) or, with ``on_error="abort"``, raise ``IngestAborted`` before
        anything is written. ``wait`` blocks until the shard workers have indexed it all.
        """
        from loaders.cli import IngestAborted
        from loaders.documents import BadRecord
        from loaders.writer import ingest, wait_indexed

        if on_error not in ("skip", "abort"):
            raise ShardqaError(f"on_error must be 'skip' or 'abort', not {on_error!r}")
        items: Iterable = _documents(documents, fmt)
        if on_error == "abort":
            items = list(items)
            bad = [item for item in items if isinstance(item, BadRecord)]
            if bad:
                more = f" (and {len(bad) - 1} more malformed)" if len(bad) > 1 else ""
                raise IngestAborted(f"{bad[0]}{more}; nothing was written (on_error='abort')")
        client = self._client("ingest")
        report = ingest(client, items, batch_size=batch_size, progress=False)
        if wait:
            wait_indexed(client, timeout=timeout, progress=False)
        return report

    def status(self) -> dict:
        """Partitions, workers and memory: what ``shardqa status --json`` prints."""
        from gears.health import status

        return status(self._client("status"))

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._asker = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _documents(documents, fmt: str) -> Iterator:
    """Paths are checked up front (a missing one raises before anything is written)."""
    from loaders.documents import input_units, read_records, read_unit

    if isinstance(documents, str | os.PathLike | Mapping):
        documents = [documents]
    documents = list(documents)
    paths = [str(d) for d in documents if isinstance(d, str | os.PathLike)]
    records = [d for d in documents if not isinstance(d, str | os.PathLike)]
    units = input_units(paths, fmt) if paths else []
    for unit in units:
        yield from read_unit(unit)
    yield from read_records(records)


def connect(url: str | None = None, *, dir: str | os.PathLike | None = None,
            timeout: float = 10.0, min_confidence: float | None = None) -> Client:
    """A client of the cluster at ``url`` (``redis://[USER:PASSWORD@]HOST:PORT``) or in the
    local cluster folder ``dir``; with neither, ``SHARDQA_REDIS_URL`` / ``SHARDQA_DIR`` /
    ``.shardqa/cluster``, as every shardqa command finds it. ``timeout``: seconds to wait
    for the shard workers' reply to a question. ``min_confidence``: answers below it are
    "no answer" (None: ``SHARDQA_MIN_CONFIDENCE`` if set, as ``shardqa ask``; else off)."""
    if url and dir:
        raise ShardqaError("connect() takes a url or a dir, not both")
    if min_confidence is None:
        min_confidence = os.environ.get("SHARDQA_MIN_CONFIDENCE") or None
    target = Target(directory=str(Path(dir))) if dir else Target.from_env(url=url)
    client = Client(target, timeout=timeout, min_confidence=min_confidence)
    client._client("ask")  # fail now, with a clear message, if the cluster is unreachable
    return client
