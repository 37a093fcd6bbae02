"""The corpus from a SQL table or query, kept in sync with it.

``shardqa ingest --sql URL --table T`` (or ``--query SQL``) reads rows with SQLAlchemy and
turns each into a Document with the same id / title / text rules as CSV and JSONL
(loaders.documents). Run again, it syncs:

* a row whose ``--version-field`` value is the one remembered is skipped without being
  split or hashed; without a version field the writer's content digest decides (an
  unchanged document writes nothing);
* new and changed rows are written by the usual writer (loaders.writer);
* ids remembered from the previous run that the source no longer has leave the corpus
  (loaders.removal).

What is remembered, per source (URL without password + table or query): a Redis hash
document id -> version (``cluster.keys.sql_source``), replaced at the end of every run. A
bad row (``table:id: reason``) keeps its document as it was: it is neither rewritten nor
deleted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, NoSuchTableError, SQLAlchemyError

from cluster import keys
from loaders.documents import BadRecord, Document, InputError, _Bad, _record_document
from loaders.removal import delete_documents
from loaders.writer import IngestReport, ingest

#: Ids written to the remembered hash per HSET.
REMEMBER_BATCH = 1000


@dataclass(frozen=True)
class BadRow(BadRecord):
    """A row that cannot be a document: ``path`` is the table (or ``query``), ``line`` the
    row's id (or ``row N`` when it has none)."""

    line: str


@dataclass(frozen=True)
class SqlSource:
    url: str
    table: str | None = None
    query: str | None = None
    id_field: str = "id"
    title_field: str = "title"
    text_field: str = "text"
    version_field: str | None = None

    def __post_init__(self) -> None:
        if (self.table is None) == (self.query is None):
            raise InputError("--sql needs exactly one of --table or --query")

    @property
    def name(self) -> str:
        """How documents and bad rows of this source are named: the table, or 'query'."""
        return self.table or "query"

    def identity(self) -> str:
        """What makes two runs the same source (the password is not part of it)."""
        url = sa.engine.make_url(self.url).render_as_string(hide_password=True)
        return f"{url}|table={self.table}" if self.table else f"{url}|query={self.query}"


@dataclass
class SyncReport:
    """An ingest report plus what syncing did: rows skipped by version, documents removed."""

    ingest: IngestReport
    rows: int = 0
    unchanged_by_version: int = 0
    removed: int = 0


def read_rows(source: SqlSource) -> Iterator[tuple[Document | BadRow, str]]:
    """Each row as a Document (or a BadRow) with its version ('' without a version field)."""
    try:
        engine = sa.create_engine(source.url)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise InputError(f"--sql: not a usable SQLAlchemy URL: {exc}") from None
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(_statement(source,
                                                                                   conn))
            for number, row in enumerate(result.mappings(), start=1):
                yield _document(source, dict(row), number)
    except NoSuchTableError:
        raise InputError(f"--table {source.table!r}: no such table") from None
    except SQLAlchemyError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise InputError(f"--sql {source.name}: {reason}") from None
    finally:
        engine.dispose()


def _statement(source: SqlSource, conn):
    if source.query is not None:
        return sa.text(source.query)
    table = sa.Table(source.table, sa.MetaData(), autoload_with=conn)
    wanted = [source.id_field, source.title_field, source.text_field, source.version_field]
    missing = [c for c in (source.id_field, source.text_field, source.version_field)
               if c and c not in table.c]
    if missing:
        raise InputError(f"--table {source.table!r} has no column(s) {', '.join(missing)}")
    return sa.select(*[table.c[c] for c in dict.fromkeys(wanted) if c and c in table.c])


def _document(source: SqlSource, row: dict, number: int) -> tuple[Document | BadRow, str]:
    raw_id = row.get(source.id_field)
    version = "" if source.version_field is None else str(row.get(source.version_field))
    if raw_id is None or isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        return BadRow(source.name, f"row {number}",
                      f"id field {source.id_field!r} must be a string or an integer"), version
    doc_id = str(raw_id)
    try:
        doc = _record_document(row, source.name, number, doc_id, id_field=source.id_field,
                               text_field=source.text_field, title_field=source.title_field)
    except _Bad as exc:
        return BadRow(source.name, doc_id, str(exc)), version
    return replace(doc, source=f"sql:{source.name}", location=f"{source.name}:{doc_id}"), version


def sync_sql(client, source: SqlSource, *, batch_size: int = 500, progress: bool = True,
             on_bad=None) -> SyncReport:
    """Ingest the source's new and changed rows and remove the documents it lost."""
    state_key = keys.sql_source(source.identity())
    remembered = {_text(k): _text(v) for k, v in client.hgetall(state_key).items()}
    seen: dict[str, str] = {}
    report = SyncReport(IngestReport())
    started = time.perf_counter()

    def documents() -> Iterator[Document | BadRecord]:
        for item, version in read_rows(source):
            report.rows += 1
            if isinstance(item, BadRow):
                if item.line in remembered:  # keep the document as it was
                    seen[item.line] = remembered[item.line]
                if on_bad is not None:
                    on_bad(item)
                yield item
                continue
            seen[item.doc_id] = version
            if source.version_field and remembered.get(item.doc_id) == version:
                report.unchanged_by_version += 1
                continue
            yield item

    report.ingest = ingest(client, documents(), source=f"sql:{source.name}",
                           batch_size=batch_size, progress=progress)
    gone = set(remembered) - set(seen)
    report.removed, passages = delete_documents(client, sorted(gone))
    report.ingest.deleted += passages
    _remember(client, state_key, seen)
    report.ingest.elapsed = time.perf_counter() - started
    return report


def _remember(client, key: str, seen: dict[str, str]) -> None:
    """Replace the remembered id -> version hash (one slot: a transaction)."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)
    items = list(seen.items())
    for start in range(0, len(items), REMEMBER_BATCH):
        pipe.hset(key, mapping=dict(items[start:start + REMEMBER_BATCH]))
    pipe.execute()


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
