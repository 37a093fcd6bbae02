"""The ``--sql`` part of ``shardqa ingest``: options checked, the sync run and its report."""

from __future__ import annotations

from loaders.documents import InputError
from loaders.sql import BadRow, SqlSource, read_rows, sync_sql
from loaders.writer import stderr


def sql_source(paths, *, sql: str | None, table: str | None, query: str | None,
               version_field: str | None, id_field: str, title_field: str,
               text_field: str) -> SqlSource | None:
    """The source the options name, or None when ``--sql`` is not given."""
    if sql is None:
        if table or query or version_field:
            raise InputError("--table, --query and --version-field need --sql URL")
        return None
    if paths:
        raise InputError("--sql reads a database; give no PATH")
    return SqlSource(sql, table=table, query=query, id_field=id_field,
                     title_field=title_field, text_field=text_field,
                     version_field=version_field)


def run_sql_ingest(client, source: SqlSource, *, on_error: str, batch_size: int) -> None:
    """Sync the corpus with the source and print the loaders' report plus what syncing did
    (``shardqa ingest`` then waits for the workers as for any input)."""
    from loaders.cli import IngestAborted, console, print_report

    if on_error == "abort":  # the whole source checked before anything is written
        bad = [item for item, _ in read_rows(source) if isinstance(item, BadRow)]
        if bad:
            extra = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
            raise IngestAborted(f"{bad[0]}{extra}; nothing from {source.name} was written "
                                "(--on-error abort)")

    def skipped(item: BadRow) -> None:
        stderr.print(f"skipped {item}", markup=False, soft_wrap=True)

    report = sync_sql(client, source, batch_size=batch_size, progress=stderr.is_terminal,
                      on_bad=skipped)
    print_report(report.ingest)
    console.print(f"{source.name}: {report.rows:,} rows read, "
                  f"{report.unchanged_by_version:,} unchanged by version, "
                  f"{report.removed:,} documents gone from the source removed")
