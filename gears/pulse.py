"""The shard worker's pulse: its heartbeat, written from a thread of its own.

The heartbeat used to be written from the worker's loop, between batches. On a starved
machine one reader or embedding batch can keep that loop busy for longer than the staleness
rule allows (5 s), and a busy worker then looked dead: the asker treated its partitions'
requests as lost and sent them again (lengthening the very queue they were in), or failed a
question with "no live shard worker" (both seen under load 3-5). The pulse beats every
``heartbeat_s`` whatever the loop is doing. It also carries when the loop last turned, so a
loop that hangs is still noticed (cluster.heartbeat: the stuck rule); a stopped process stops
both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cluster import heartbeat
from cluster.connection import Target, connect
from cluster.heartbeat import Heartbeat
from cluster.routing import CLUSTER_TROUBLE

log = logging.getLogger("shardqa.worker")


class Pulse:
    """Writes ``record()`` as ``worker_id``'s heartbeat every ``every_s`` seconds, on its own
    connection, until stopped; a failed write is logged and tried again at the next beat."""

    def __init__(self, target: Target, worker_id: str, record: Callable[[], Heartbeat],
                 every_s: float):
        self.worker_id, self.record, self.every_s = worker_id, record, every_s
        self.client = connect(target)
        self._stopping = threading.Event()
        self._writing = threading.Lock()  # the loop may beat too (beat_now): one at a time
        self._thread = threading.Thread(target=self._run, name="shardqa-heartbeat",
                                        daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (before the worker removes its heartbeat, so none is written after)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(2.0, 2 * self.every_s))

    def beat(self) -> bool:
        """Write the record now (from the pulse's thread, or from the loop when what the
        worker serves has just changed: the asker must not wait a beat to see it)."""
        try:
            with self._writing:  # the record made under the lock: the last write is the newest
                heartbeat.write(self.client, self.worker_id, self.record())
            return True
        except CLUSTER_TROUBLE as exc:
            log.warning("heartbeat not written (%s); trying again in %gs", exc, self.every_s)
        except Exception:  # noqa: BLE001 - the pulse outlives any one failure
            log.exception("heartbeat not written; trying again in %gs", self.every_s)
        return False

    def _run(self) -> None:
        while not self._stopping.wait(self.every_s):
            self.beat()
