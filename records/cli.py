"""``shardqa sync``: run the write-behind job that moves the question log into SQL."""

from __future__ import annotations

import logging
import signal

import click
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from cluster.connection import Target, connect
from cluster.errors import ShardqaError
from cluster.options import log_level_option, start_logging, target_options
from records.schema import open_engine
from records.settings import RecordSettings, database_url
from records.sync import Syncer

log = logging.getLogger("shardqa.sync")
_DEFAULTS = RecordSettings()


class DatabaseUrlError(ShardqaError):
    exit_code = 2


@click.command("sync")
@click.option("--db", "db_url", default=None, metavar="URL",
              help="SQLAlchemy URL of the database of record, e.g. "
                   "postgresql+psycopg://user:pw@host/db [env SHARDQA_DB_URL; default: "
                   "records.sqlite in the cluster folder]")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help=f"log entries per SQL transaction [{_DEFAULTS.batch_size}; "
                   "env SHARDQA_SYNC_BATCH]")
@click.option("--max-backoff", type=click.FloatRange(0.1), default=None,
              help=f"longest wait in seconds between retries while the database is down "
                   f"[{_DEFAULTS.max_backoff_s:g}; env SHARDQA_SYNC_MAX_BACKOFF]")
@click.option("--claim-idle-ms", type=click.IntRange(1), default=None,
              help="claim entries another consumer left pending this long "
                   f"[{_DEFAULTS.claim_idle_ms}; env SHARDQA_SYNC_CLAIM_IDLE_MS]")
@click.option("--consumer", default=None, help="consumer name [sync-HOSTNAME]")
@click.option("--until-empty", is_flag=True,
              help="stop once the stream holds nothing unsynced (for cron and tests)")
@log_level_option
@target_options
def sync_command(db_url, batch_size, max_backoff, claim_idle_ms, consumer, until_empty,
                 log_level, target):
    """Move answered questions and feedback from the log stream into SQL (write-behind)."""
    start_logging(log_level)
    settings = RecordSettings.from_env(batch_size=batch_size, max_backoff_s=max_backoff,
                                       claim_idle_ms=claim_idle_ms)
    client = connect(sync_target(target))  # first: the cluster folder exists, or we stop
    url = database_url(db_url, target.directory)
    try:
        engine = open_engine(url)
    except (ArgumentError, NoSuchModuleError) as exc:
        client.close()
        raise DatabaseUrlError(f"--db {url!r} is not a usable SQLAlchemy URL: {exc}") from None
    syncer = Syncer(client, engine, settings, consumer=consumer)
    signal.signal(signal.SIGTERM, lambda *_: syncer.stop.set())
    log.info("syncing the question log into %s", engine.url.render_as_string(hide_password=True))
    try:
        counters = syncer.run(until_empty=until_empty)
    finally:
        client.close()
        engine.dispose()
    click.echo(f"synced {counters.written} event(s) in {counters.batches} batch(es); "
               f"{counters.malformed} malformed skipped")


def sync_target(target: Target) -> Target:
    """The ``sync`` ACL user; the admin for a cluster folder made before that user existed."""
    synced = target.as_role("sync")
    try:
        synced.credentials()
    except ShardqaError:
        log.warning("this cluster has no 'sync' user (made by an older shardqa): "
                    "syncing as admin")
        return target.as_role("admin")
    return synced
