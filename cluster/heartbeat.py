"""The worker heartbeat: the record a shard worker writes every second and clients read.

It lives on the ground floor, not in gears/, because both sides need it and the loaders
(``loaders.writer.running_workers``) may not import gears: the worker writes it, health,
the loaders, ``shardqa up``/``scale`` and the bench read it. One rule says whether a worker
is alive: its last heartbeat is at most ``stale_s()`` old (``SHARDQA_HEARTBEAT_STALE_S``,
default 5 s: five missed beats) and its loop has turned within ``stuck_s()``
(``SHARDQA_LOOP_STUCK_S``, default 60 s). The heartbeat comes from a thread of the worker's
own (gears.pulse), so a loop busy with a long batch still beats; a loop that hangs stops
counting once it has not turned for a minute.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

from cluster import keys

DEFAULT_STALE_S = 5.0
STALE_ENV = "SHARDQA_HEARTBEAT_STALE_S"
DEFAULT_STUCK_S = 60.0
STUCK_ENV = "SHARDQA_LOOP_STUCK_S"


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env)
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


def stale_s() -> float:
    """Seconds after which a silent worker counts as down (the one staleness rule)."""
    return _seconds(STALE_ENV, DEFAULT_STALE_S)


def stuck_s() -> float:
    """Seconds without a turn of its loop after which a beating worker counts as down."""
    return _seconds(STUCK_ENV, DEFAULT_STUCK_S)


@dataclass
class Heartbeat:
    """One worker's last word: where it runs, what it serves, whether it can read."""

    master: str  # the node it was started beside
    time: float  # unix time of the beat
    serving: str = ""  # the node of its shard that is master now (differs after a failover)
    partitions: list[int] = field(default_factory=list)
    pid: int = 0
    model: str | None = None  # "version:variant" of the verified reader it loaded
    no_reader: str | None = None  # why it has no verified reader (None when it has one)
    turned: float | None = None  # unix time its loop last finished a turn (None: not yet)
    counters: dict = field(default_factory=dict)  # requests, batches, ingested, errors, ...

    def encode(self) -> str:
        data = asdict(self)
        counters = data.pop("counters")
        return json.dumps({**counters, **data})

    @classmethod
    def decode(cls, raw: str | bytes) -> Heartbeat | None:
        """The record, or None if it is not one (a malformed entry is skipped, not fatal)."""
        try:
            data = json.loads(raw)
            known = {name: data.pop(name) for name in list(data) if name in _FIELDS}
            beat = cls(**known, counters=data)
            beat.time = float(beat.time)
            beat.partitions = [int(i) for i in beat.partitions]
            beat.turned = None if beat.turned is None else float(beat.turned)
            return beat
        except (ValueError, TypeError, AttributeError):
            return None

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.time)

    def stuck(self, now: float | None = None) -> bool:
        """It beats but its loop has not turned for ``stuck_s()`` (a hung loop)."""
        if self.turned is None:
            return False
        return (time.time() if now is None else now) - float(self.turned) > stuck_s()

    def fresh(self, now: float | None = None, stale: float | None = None) -> bool:
        return self.age(now) <= (stale_s() if stale is None else stale) and not self.stuck(now)

    def as_dict(self) -> dict:
        """The flat record as stored (counters beside the fields)."""
        return json.loads(self.encode())


_FIELDS = {"master", "time", "serving", "partitions", "pid", "model", "no_reader", "turned"}


def write(client, worker_id: str, beat: Heartbeat) -> None:
    client.hset(keys.workers(), worker_id, beat.encode())


def remove(client, worker_id: str) -> None:
    client.hdel(keys.workers(), worker_id)


def all_workers(client) -> dict[str, Heartbeat]:
    """Worker id -> its last heartbeat, fresh or not (malformed records left out)."""
    found = {}
    for wid, raw in client.hgetall(keys.workers()).items():
        beat = Heartbeat.decode(raw)
        if beat is not None:
            found[wid.decode() if isinstance(wid, bytes) else wid] = beat
    return found


def live_workers(client, now: float | None = None, stale: float | None = None
                 ) -> dict[str, Heartbeat]:
    """Worker id -> heartbeat, for the workers whose heartbeat is fresh."""
    now = time.time() if now is None else now
    return {wid: b for wid, b in all_workers(client).items() if b.fresh(now, stale)}
