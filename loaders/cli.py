"""``shardqa ingest``: load documents into the cluster's partitions for the workers to index."""

from __future__ import annotations

from collections.abc import Iterator

import click
from rich.console import Console
from rich.table import Table

from cluster import partitions
from cluster.connection import connect
from cluster.errors import ShardqaError
from cluster.options import target_options
from loaders.documents import (
    FORMATS,
    BadRecord,
    Document,
    IngestSettings,
    InputUnit,
    input_units,
    read_unit,
)
from loaders.sql_cli import run_sql_ingest, sql_source
from loaders.writer import IngestReport, ingest, stderr, wait_indexed

console = Console(highlight=False)
#: Errors listed one by one in the summary; the rest are only counted.
ERRORS_SHOWN = 20


class IngestAborted(ShardqaError):
    """``--on-error abort`` met a malformed record; nothing from its file was written."""

    exit_code = 2
    http_status = 400


class IngestIncomplete(ShardqaError):
    """``--on-error skip`` skipped records (exit 1), or nothing at all was ingested (exit 2):
    a script must not take a partial load for a whole one."""

    http_status = 400


@click.command("ingest")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="input format; auto goes by extension (.jsonl/.ndjson, .json = SQuAD, .csv, "
              "folders and .txt/.md = text); ovos-wiki takes no PATH")
@click.option("--id-field", default="id", show_default=True, help="JSONL/CSV document id field")
@click.option("--text-field", default="text", show_default=True, help="JSONL/CSV text field")
@click.option("--title-field", default="title", show_default=True, help="JSONL/CSV title field")
@click.option("--on-error", type=click.Choice(["skip", "abort"]), default="skip",
              show_default=True, help="skip: report malformed records, ingest the rest, exit 1 "
              "(2 if nothing was ingested); abort: stop before writing anything from a file "
              "that has one (exit 2)")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="wait until the shard workers have tokenized and indexed everything")
@click.option("--timeout", type=click.FloatRange(0), default=600, show_default=True,
              help="seconds --wait waits for the workers")
@click.option("--batch-size", type=click.IntRange(1), default=500, show_default=True,
              help="passages per written batch")
@click.option("--max-document-bytes", type=click.IntRange(1),
              default=IngestSettings.max_document_bytes, show_default=True,
              envvar="SHARDQA_MAX_DOCUMENT_BYTES",
              help="a document with more bytes of text is reported as file:line and skipped")
@click.option("--sql", default=None, metavar="URL",
              help="read a SQL database instead (SQLAlchemy URL); run again, it syncs")
@click.option("--table", default=None, help="--sql: the table to read")
@click.option("--query", default=None, metavar="SQL", help="--sql: a SELECT to read instead")
@click.option("--version-field", default=None,
              help="--sql: a column that changes when a row does [default: content hash]")
@target_options
def ingest_command(paths, fmt, id_field, text_field, title_field, on_error, wait, timeout,
                   batch_size, max_document_bytes, sql, table, query, version_field, target):
    """Read documents from PATH... (files or folders), or a SQL table (--sql), split them
    into passages and write them into their partitions. Re-ingesting the same input
    changes nothing; re-ingesting a SQL source also removes the rows it lost."""
    source = sql_source(paths, sql=sql, table=table, query=query, version_field=version_field,
                        id_field=id_field, title_field=title_field, text_field=text_field)
    if source is not None:
        _ingest_sql(source, on_error, wait, timeout, batch_size, target)
        return
    units = input_units(list(paths), fmt)
    client = _connect_partitioned(target)
    try:
        fields = {"id_field": id_field, "text_field": text_field, "title_field": title_field,
                  "max_document_bytes": max_document_bytes}
        reader = _abort_on_error if on_error == "abort" else _skip_errors
        report = ingest(client, reader(units, fields), batch_size=batch_size,
                        progress=stderr.is_terminal)
        print_report(report)
        if wait and report.documents:
            _wait_indexed(client, timeout)
    finally:
        client.close()
    check_complete(report)


def _connect_partitioned(target):
    """A client to a cluster that has a partition map; else a one-line error."""
    client = connect(target)
    try:
        partitions.load(client)
    except partitions.NoPartitionMap as exc:
        client.close()
        raise ShardqaError(str(exc)) from None
    return client


def _wait_indexed(client, timeout: float) -> None:
    wait_indexed(client, timeout=timeout, progress=stderr.is_terminal)
    console.print("indexed: the workers consumed every ingest entry")


def _ingest_sql(source, on_error: str, wait: bool, timeout: float, batch_size: int,
                target) -> None:
    """``ingest --sql``: sync the corpus with a SQL source (loaders/sql.py), then wait."""
    client = _connect_partitioned(target)
    try:
        run_sql_ingest(client, source, on_error=on_error, batch_size=batch_size)
        if wait:
            _wait_indexed(client, timeout)
    finally:
        client.close()


def check_complete(report: IngestReport) -> None:
    """Raise IngestIncomplete unless every record read was ingested."""
    skipped, total = len(report.errors), report.documents + len(report.errors)
    if report.documents == 0:
        raise IngestIncomplete(
            f"nothing was ingested: all {total:,} records were malformed (listed above)"
            if skipped else "nothing was ingested: the input holds no documents", exit_code=2)
    if skipped:
        raise IngestIncomplete(f"not everything was ingested: {skipped:,} of {total:,} records "
                               f"were malformed and skipped (listed above); the other "
                               f"{report.documents:,} were ingested", exit_code=1)


def _skip_errors(units: list[InputUnit], fields: dict) -> Iterator[Document | BadRecord]:
    for unit in units:
        for item in read_unit(unit, **fields):
            if isinstance(item, BadRecord):
                stderr.print(f"skipped {item}", markup=False, soft_wrap=True)
            yield item


def _abort_on_error(units: list[InputUnit], fields: dict) -> Iterator[Document]:
    """Each file is read and checked in full before the first of its documents is yielded."""
    for unit in units:
        items = list(read_unit(unit, **fields))
        bad = next((item for item in items if isinstance(item, BadRecord)), None)
        if bad is not None:
            more = sum(isinstance(item, BadRecord) for item in items) - 1
            extra = f" (and {more} more malformed)" if more else ""
            raise IngestAborted(f"{bad}{extra}; nothing from {unit.path} was written "
                                "(--on-error abort)")
        yield from items


def print_report(report: IngestReport) -> None:
    rate = report.passages / report.elapsed if report.elapsed > 0 else 0.0
    table = Table(title="ingest", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("documents", f"{report.documents:,} ({report.documents_written:,} written)")
    table.add_row("passages written", f"{report.written:,}")
    table.add_row("passages unchanged", f"{report.unchanged:,}")
    table.add_row("passages deleted", f"{report.deleted:,}")
    table.add_row("bytes of text", f"{report.bytes:,}")
    table.add_row("errors", f"{len(report.errors):,}")
    table.add_row("elapsed", f"{report.elapsed:.2f}s ({rate:,.0f} passages/s)")
    console.print(table)
    if report.per_partition:
        parts = Table("partition", "passages written", title="per partition")
        for index in sorted(report.per_partition):
            parts.add_row(str(index), f"{report.per_partition[index]:,}")
        console.print(parts)
    for error in report.errors[:ERRORS_SHOWN]:
        console.print(f"error: {error}", markup=False, soft_wrap=True)
    if len(report.errors) > ERRORS_SHOWN:
        console.print(f"... and {len(report.errors) - ERRORS_SHOWN} more errors")
