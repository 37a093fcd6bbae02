"""The shard worker: runs beside one master and reacts to what lands on that master's shard.

It replaces the RedisGears registrations of the old design. Its parts, one job each:

* Shard (gears.follower): which node of the shard is master now (it follows a failover)
  and which partitions that node owns;
* StreamConsumer (gears.consumer): reads the partitions' streams in the ``workers`` group,
  acknowledges, claims stale entries, recreates a vanished stream, dead-letters poison;
* ModelSlot (gears.model_slot): the verified reader, reloaded on a new version, retried
  with backoff while the shard's copy is missing or corrupt;
* ReadServer (gears.read_server): batches of read requests -> the reader -> replies;
* Indexer (gears.indexer): ingest entries -> ingest stages (token windows, BM25 index,
  passage vectors);
* Reembedder (gears.reembed): a partition's vectors re-made with a newly pushed encoder,
  a batch at a time when there is nothing else to do (and at least every second);
* KeyMissResponder (gears.keymiss): answers redis-cli GETs of ``sq:qa:<question>``;
* ShardEvents (gears.events): wakes the loop on the master's ``xadd``/``keymiss`` events;
  it polls slowly as well, since pub/sub is at-most-once;
* Pulse (gears.pulse): the heartbeat (cluster.heartbeat) every second from a thread of its
  own: what it serves, whether it can read, when the loop last turned.

The loop below only composes them. Processing an entry twice is harmless, so a crash at
any point loses nothing: pending entries are read again at start (the consumer name is
stable per master) or claimed by another worker.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from cluster import heartbeat, partitions, routing
from cluster.connection import Target, connect
from cluster.heartbeat import Heartbeat
from cluster.routing import CLUSTER_TROUBLE
from gears.consumer import StreamConsumer
from gears.counters import Counters
from gears.embedder import EmbedStage
from gears.events import ShardEvents
from gears.follower import Shard
from gears.indexer import Bm25Stage, Indexer, IngestStage
from gears.keymiss import KeyMissResponder
from gears.model_slot import ModelSlot
from gears.pulse import Pulse
from gears.read_server import ReadServer
from gears.reembed import Reembedder
from gears.settings import WorkerSettings
from gears.windows import TokenizeStage, TokenWindows

log = logging.getLogger("shardqa.worker")


class Every:
    """A duty due every ``seconds`` (or at once, after ``soon``)."""

    def __init__(self, seconds: float):
        self.seconds, self._next = seconds, 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True

    def soon(self) -> None:
        self._next = 0.0


class ShardWorker:
    def __init__(self, target: Target, master: str, settings: WorkerSettings | None = None):
        host, _, port = master.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--master must be HOST:PORT, got {master!r}")
        self.master = master
        self.settings = s = settings or WorkerSettings()
        self.worker_id = f"{master}/{socket.gethostname()}:{os.getpid()}"
        self.client = connect(target)
        self.counters = Counters()
        self.shard = Shard(target, self.client, master, partitions.load(self.client))
        self.slot = ModelSlot(self.client, s)
        self.consumer = StreamConsumer(self.shard, f"worker-{master}", s, self.counters)
        self.keymiss = KeyMissResponder(self.client, s, self.counters)
        self.events = ShardEvents(self.keymiss.on_event)
        windows = TokenWindows(self.shard, self.slot)
        self.reads = ReadServer(self.shard, self.consumer, self.events, self.slot, windows, s,
                                self.counters, self.worker_id)
        self.embedder = EmbedStage(self.shard, threads=s.threads, batch=s.embed_batch,
                                   max_tokens=s.embed_max_tokens)
        self.indexer = Indexer(self.shard, self.consumer, self.ingest_stages(windows), s,
                               self.counters)
        self.reembed = Reembedder(self.shard, self.embedder, s, self.counters)
        self._reembed = Every(s.reembed_every_s)
        self.stopping = threading.Event()
        self._refresh = Every(s.refresh_s)
        self._claim = Every(max(1.0, s.claim_idle_ms / 2000))
        self.turned: float | None = None  # unix time the loop last finished a turn
        self.pulse = Pulse(target, self.worker_id, self.heartbeat, s.heartbeat_s)

    def ingest_stages(self, windows: TokenWindows) -> list[IngestStage]:
        """What every ingested batch goes through, in order."""
        return [TokenizeStage(windows), Bm25Stage(self.shard), self.embedder]

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        log.info("worker %s starting beside %s", self.worker_id, self.master)
        self.events.attach(self.shard.node)
        try:
            self.duties(force=True)
        except CLUSTER_TROUBLE as exc:
            log.warning("cluster not reachable yet (%s); retrying", exc)
        self.pulse.start()
        try:
            while not self.stopping.is_set():
                self.turn()
        finally:
            self.pulse.stop()
            self.keymiss.shutdown()
            try:
                heartbeat.remove(self.client, self.worker_id)
            except CLUSTER_TROUBLE:
                pass
            log.info("worker %s stopped", self.worker_id)

    def turn(self) -> None:
        """One step that never raises: Redis trouble reconnects, anything else is logged."""
        try:
            self.step()
        except CLUSTER_TROUBLE as exc:
            # master gone or slots moved: reconnect and follow the map
            log.warning("redis error (%s); reconnecting", exc)
            self.counters.errors += 1
            time.sleep(0.5)
            self.reconnect()
        except Exception:  # noqa: BLE001 - the loop outlives any one failure
            log.exception("unexpected error in the worker loop; carrying on")
            self.counters.errors += 1
            time.sleep(0.5)
        finally:
            self.turned = time.time()

    def step(self) -> int:
        """One turn of the loop; returns how many entries it handled."""
        self.duties()
        handled = self.reads.serve() + self.indexer.serve()
        if not handled or self._reembed.due():  # questions and ingest first
            handled += self.reembed.serve()
        self.events.wait(0 if handled else self.settings.idle_poll_s)
        return handled

    def duties(self, force: bool = False) -> None:
        """What is due: follow the shard and the model, claim stale entries."""
        if self.consumer.moved:  # a slot is moving away: look at the map again now
            self.consumer.moved = False
            self._refresh.soon()
        if (self._refresh.due() or force) and self.follow_shard():
            self.pulse.beat()  # partitions gained or lost: say so now, not at the next beat
        if self._claim.due() or force:
            self.consumer.claim_stale()

    def follow_shard(self) -> bool:
        """Follow a failover and the partitions' moves; True if what it serves changed."""
        change = self.shard.refresh()
        if change.followed:
            self.events.attach(self.shard.node)
            self.slot.forget()
        if change.changed:
            self.consumer.join(change.acquired)
        self.slot.refresh(self.shard.serving)
        return bool(change.followed or change.changed)

    def reconnect(self) -> None:
        """After a redis error: refresh the slot map and follow the shard (never raises)."""
        try:
            routing.refresh(self.client)
            self.duties(force=True)
            self.events.attach(self.shard.node)
        except CLUSTER_TROUBLE as exc:
            log.warning("still cannot reach the cluster (%s)", exc)

    def heartbeat(self) -> Heartbeat:
        """The record the pulse writes (read from its thread: plain attribute reads)."""
        return Heartbeat(
            master=self.master, time=time.time(), serving=self.shard.serving,
            partitions=[p.index for p in self.shard.owned], pid=os.getpid(),
            model=self.slot.version if self.slot.reader is not None else None,
            no_reader=self.slot.problem, turned=self.turned, counters=self.counters.as_dict())
