"""The database of record's settings: every default defined here, once.

Flags override environment variables (``SHARDQA_*``), which override these defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from cluster.errors import ShardqaError

#: The SQLite file, in the cluster folder, when no ``--db`` / ``SHARDQA_DB_URL`` is given.
SQLITE_FILE = "records.sqlite"


class SettingError(ShardqaError):
    exit_code = 2


@dataclass(frozen=True)
class RecordSettings:
    #: The stream keeps about this many entries (XADD MAXLEN ~). At the cap the oldest
    #: entries are trimmed, synced or not: a sync job down for that long loses the oldest.
    stream_maxlen: int = 1_000_000
    #: Stream entries read and written to SQL per transaction.
    batch_size: int = 500
    #: How long one XREADGROUP blocks waiting for new entries.
    block_ms: int = 1000
    #: Entries pending (read, unacknowledged) this long on another consumer are claimed.
    claim_idle_ms: int = 60_000
    #: Longest wait between retries while the database (or Redis) is unreachable.
    max_backoff_s: float = 30.0
    #: Events the API holds in memory while Redis does not take them; beyond, they are
    #: dropped (and counted: shardqa_log_dropped_total), never the answer.
    buffer_events: int = 10_000

    @classmethod
    def from_env(cls, **overrides) -> RecordSettings:
        """Defaults, then SHARDQA_LOG_MAXLEN and friends, then the given non-None values."""
        env = {
            "stream_maxlen": "SHARDQA_LOG_MAXLEN", "batch_size": "SHARDQA_SYNC_BATCH",
            "block_ms": "SHARDQA_SYNC_BLOCK_MS", "claim_idle_ms": "SHARDQA_SYNC_CLAIM_IDLE_MS",
            "max_backoff_s": "SHARDQA_SYNC_MAX_BACKOFF", "buffer_events": "SHARDQA_LOG_BUFFER",
        }
        types = {f.name: f.type for f in fields(cls)}
        values = {}
        for name, var in env.items():
            raw = os.environ.get(var)
            if raw:
                try:
                    values[name] = float(raw) if types[name] == "float" else int(raw)
                except ValueError:
                    what = "a number" if types[name] == "float" else "an integer"
                    raise SettingError(f"{var}={raw!r} is not {what}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


def database_url(url: str | None, cluster_dir: str | os.PathLike) -> str:
    """``--db`` / ``SHARDQA_DB_URL``, else a SQLite file in the cluster folder."""
    url = url or os.environ.get("SHARDQA_DB_URL")
    if url:
        return url
    path = Path(cluster_dir).resolve() / SQLITE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"
