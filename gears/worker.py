"""The shard worker: runs beside one master and reacts to what lands on that master's shard.

It replaces the RedisGears registrations of the old design. For every partition whose
slot its master owns it:

* reads the partition's ingest stream (consumer group, at-least-once), tokenizes passages
  with the reader's tokenizer, stores the packed windows beside the passage and updates the
  partition's BM25 index, acknowledging only after its writes are done;
* reads the partition's request stream in batches (up to ``max_batch`` requests, waiting at
  most ``max_wait_ms`` for more: RedisAI's BATCHSIZE / MINBATCHTIMEOUT), runs the reader on
  all (question, window) pairs of the batch and pushes each request's reply;
* answers key-miss events for ``sq:qa:<question>`` keys on its master (GET from redis-cli).

It follows its shard (ShardFollower): after a failover it serves from whichever node of the
shard (its master and that master's replicas) is master now, and reconnects by itself; slots
moved to another shard by a rebalance are simply no longer its own.

It wakes on the master's keyspace events (``xadd``, ``keymiss``) instead of polling, and
polls slowly as well, since pub/sub is at-most-once. Entries left pending by a crash are
read again at start (its own consumer name is stable per master) or claimed from other
consumers after ``claim_idle_ms`` (XAUTOCLAIM). Processing an entry twice is harmless.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis

from cluster import keys, partitions
from cluster.connection import Target, connect, node_client
from cluster.partitions import Partition, PartitionMap
from gears import index
from gears.protocol import ReadReply, ReadRequest, SpanReply, now_ms

log = logging.getLogger("shardqa.worker")

PASSAGE_FIELDS = ("text", "title", "tok_ids", "tok_offs", "tok_wins", "tok_sig")
REPLY_TTL_S = 60
#: what a cluster in trouble raises (node down, failover under way, whole cluster restarting)
CLUSTER_TROUBLE = (redis.RedisError, redis.exceptions.RedisClusterException)
KEYMISS_CHANNEL = "__keyevent@0__:keymiss"
XADD_CHANNEL = "__keyevent@0__:xadd"


def default_threads(workers: int = 1) -> int:
    """Torch threads of each of ``workers`` workers sharing this machine: the cores divided
    among them (at least one). Measured both ways on 2 cores: two 2-thread workers beat two
    1-thread ones on uncached questions (bench/: int8 k=5 p50 48 vs 67 ms, 10.4 vs 9.3 q/s at
    concurrency 16), but three 2-thread workers under the soak's mixed load tripled its p99
    (380 vs 121 ms): oversubscribed cores make the slowest questions slower."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@dataclass
class WorkerSettings:
    max_batch: int = 16  # requests per batch
    max_wait_ms: float = 2.0  # how long a partial batch may wait for more requests
    max_batch_pairs: int = 8  # (question, window) pairs per forward pass, and per reply group
    ingest_batch: int = 256
    threads: int | None = None  # torch threads for the reader
    stride: int = 128  # token overlap of consecutive windows
    claim_idle_ms: int = 15000  # pending entries of other consumers idle this long are claimed
    idle_poll_s: float = 0.5
    heartbeat_s: float = 1.0
    refresh_s: float = 2.0
    keymiss_threads: int = 4
    answer_ttl_s: int = 3600


class ShardFollower:
    """Which node of the worker's shard is master now.

    A shard is a master and its replicas. The worker starts beside one of its nodes (home);
    after a failover that node is a replica or gone and a former replica is master: follow
    it. The shard's members are learned from every slot table seen, so a dead home node is
    still recognised through the replica that replaced it.
    """

    def __init__(self, home: str):
        self.home = home
        self.nodes: set[str] = {home}

    def master(self, table: dict[tuple[int, int], dict]) -> str:
        """The shard's master in this slot table (home while the shard holds no slots)."""
        primaries: set[str] = set()
        for info in table.values():
            members = {info["primary"], *info["replicas"]}
            if members & self.nodes:
                self.nodes |= members
                primaries.add(info["primary"])
        if not primaries or self.home in primaries:
            return self.home
        return sorted(primaries)[0]


@dataclass
class Counters:
    requests: int = 0
    batches: int = 0
    pairs: int = 0
    ingested: int = 0
    keymiss: int = 0
    errors: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


class ShardWorker:
    def __init__(self, target: Target, master: str, settings: WorkerSettings | None = None):
        self.target = target
        self.master = master
        host, _, port = master.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--master must be HOST:PORT, got {master!r}")
        self.host, self.port = host, int(port)
        self.shard = ShardFollower(master)
        self.serving = master  # the node of our shard that is master now
        self.settings = settings or WorkerSettings()
        self.consumer = f"worker-{master}"
        self.worker_id = f"{master}/{socket.gethostname()}:{os.getpid()}"
        self.client = connect(target)
        self.node = node_client(target, self.host, self.port, socket_timeout=10)
        self.pmap: PartitionMap = partitions.load(self.client)
        self.owned: list[Partition] = []
        self.counters = Counters()
        self.stopping = threading.Event()
        self._model_version: str | None = None
        self._loaded = None
        self._reader = None
        self._tok_sig_prefix = ""
        self._pubsub = None
        self._next_refresh = 0.0
        self._next_heartbeat = 0.0
        self._next_claim = 0.0
        self._recover: set[str] = set()  # streams whose own pending entries to re-read
        self._keymiss_pool = ThreadPoolExecutor(self.settings.keymiss_threads,
                                                thread_name_prefix="keymiss")
        self._keymiss_inflight: set[str] = set()
        self._keymiss_lock = threading.Lock()
        self._asker = None

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        log.info("worker %s starting beside %s", self.worker_id, self.master)
        self._subscribe()
        try:
            self._refresh(force=True)
        except CLUSTER_TROUBLE as exc:
            log.warning("cluster not reachable yet (%s); retrying", exc)
        try:
            while not self.stopping.is_set():
                try:
                    self.step()
                except CLUSTER_TROUBLE as exc:
                    # master gone or slots moved: reconnect and follow the map
                    log.warning("redis error (%s); reconnecting", exc)
                    self.counters.errors += 1
                    time.sleep(0.5)
                    self._reconnect()
        finally:
            self._keymiss_pool.shutdown(wait=False, cancel_futures=True)
            try:
                self.client.hdel(keys.workers(), self.worker_id)
            except redis.RedisError:
                pass
            log.info("worker %s stopped", self.worker_id)

    def step(self) -> int:
        """One turn of the loop; returns how many entries it handled."""
        self._refresh()
        handled = self._serve_requests() + self._serve_ingest()
        if handled:
            self._drain_events(0)
        else:
            self._drain_events(self.settings.idle_poll_s)
        return handled

    def _reconnect(self) -> None:
        """After a redis error: refresh the slot map and follow the shard (never raises)."""
        try:
            self.client.nodes_manager.initialize()
            self._pubsub = None
            self._refresh(force=True)
            self._subscribe()
        except CLUSTER_TROUBLE as exc:
            log.warning("still cannot reach the cluster (%s)", exc)

    # --- periodic duties -----------------------------------------------------------------

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self._next_refresh:
            self._next_refresh = now + self.settings.refresh_s
            self._refresh_ownership()
            self._refresh_model()
        if force or now >= self._next_claim:
            self._next_claim = now + max(1.0, self.settings.claim_idle_ms / 2000)
            self._claim_stale()
        if force or now >= self._next_heartbeat:
            self._next_heartbeat = now + self.settings.heartbeat_s
            self._heartbeat()

    def _refresh_ownership(self) -> None:
        table = partitions.slot_table(self.client)
        serving = self.shard.master(table)
        if serving != self.serving:
            self._follow(serving)
        owned = [p for p in self.pmap if _owner(table, p.slot) == self.serving]
        if owned != self.owned:
            log.info("serving partitions %s", [p.index for p in owned])
            # partitions moved (rebalance): store.tag_for finds our model copy in the slot cache
            self.client.nodes_manager.initialize()
            acquired = {p.index for p in owned} - {p.index for p in self.owned}
            for p in owned:
                for stream in (keys.ingest_stream(p.tag), keys.request_stream(p.tag)):
                    try:
                        self.node.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
                    except redis.ResponseError as exc:
                        if "BUSYGROUP" not in str(exc):
                            raise
                    if p.index in acquired:
                        # a partition moved here: its previous owner has let go of it, so what
                        # it left pending is ours now, without waiting claim_idle_ms
                        self.node.xautoclaim(stream, keys.WORKER_GROUP, self.consumer, 0,
                                             start_id="0-0", count=1000, justid=True)
                    self._recover.add(stream)
            self.owned = owned

    def _follow(self, serving: str) -> None:
        """Serve from another node of our shard (failover): node client, events, model."""
        log.warning("shard master is now %s (was %s); following it", serving, self.serving)
        self.serving = serving
        host, _, port = serving.rpartition(":")
        self.node = node_client(self.target, host, int(port), socket_timeout=10)
        self._pubsub = None
        self._subscribe()
        self.client.nodes_manager.initialize()  # store.tag_for reads the slot cache
        self.owned = []  # re-read our own pending entries on the new master
        self._model_version = None

    def _refresh_model(self) -> None:
        from models import store

        try:
            meta = store.current_meta(self.client, self.serving)
        except store.NoModel:
            meta = None
        version = meta and f"{meta.get('version')}:{meta.get('variant', '')}"
        if version == self._model_version:
            return
        if meta is None:
            self._loaded = self._reader = None
            self._model_version = None
            return
        try:
            loaded = store.load(self.client, self.serving)
        except store.NoModel:
            return
        except store.CorruptModel as exc:
            log.error("%s", exc)
            self._model_version = version  # don't retry a corrupt model every tick
            return
        reader = loaded.reader(threads=self.settings.threads,
                               max_batch_pairs=self.settings.max_batch_pairs)
        reader.warm_up()
        replaced = self._model_version is not None
        self._loaded, self._reader, self._model_version = loaded, reader, version
        if replaced:  # answers cached under the previous reader (or its settings) are stale
            self.client.incr(keys.generation())
        tok_digest = zlib.crc32(loaded.tokenizer.to_str().encode())
        self._tok_sig_prefix = f"{tok_digest:08x}:{self._window_tokens()}:{self.settings.stride}"
        log.info("reader %s loaded (%s)", loaded.meta.get("name"), version)

    def _window_tokens(self) -> int:
        from models.tokenization import window_token_budget

        meta = self._loaded.meta
        return window_token_budget(int(meta.get("max_seq_len", 384)),
                                   int(meta.get("max_question_tokens", 64)),
                                   self._reader.layout.special_tokens)

    def _claim_stale(self) -> None:
        for p in self.owned:
            for stream in (keys.ingest_stream(p.tag), keys.request_stream(p.tag)):
                try:
                    self.node.xautoclaim(stream, keys.WORKER_GROUP, self.consumer,
                                         self.settings.claim_idle_ms, start_id="0-0",
                                         count=1000, justid=True)
                except (redis.exceptions.AskError, redis.exceptions.TryAgainError):
                    self._next_refresh = 0.0  # moving away (rebalance): look again next turn
                except redis.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                self._recover.add(stream)

    def _heartbeat(self) -> None:
        c = self.counters
        beat = {
            "master": self.master, "serving": self.serving,
            "partitions": [p.index for p in self.owned],
            "time": time.time(), "pid": os.getpid(), "model": self._model_version,
            "requests": c.requests, "batches": c.batches, "pairs": c.pairs,
            "ingested": c.ingested, "keymiss": c.keymiss, "errors": c.errors,
            "batch_sizes": c.batch_sizes,
        }
        self.client.hset(keys.workers(), self.worker_id, json.dumps(beat))

    # --- events --------------------------------------------------------------------------

    def _subscribe(self) -> None:
        if self._pubsub is not None:
            return
        try:
            ps = self.node.pubsub(ignore_subscribe_messages=True)
            ps.subscribe(KEYMISS_CHANNEL, XADD_CHANNEL)
            self._pubsub = ps
        except redis.RedisError as exc:
            log.warning("cannot subscribe to keyspace events (%s); polling", exc)
            self._pubsub = None

    def _drain_events(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for an event; dispatch key misses. True if an xadd came."""
        if self._pubsub is None:
            self._subscribe()
            if self._pubsub is None:
                time.sleep(min(timeout, 0.05))
                return False
        woke = False
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                msg = self._pubsub.get_message(timeout=max(0.0, remaining))
            except (redis.ConnectionError, redis.TimeoutError):
                self._pubsub = None
                return woke
            if msg is None:
                return woke
            channel = msg["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            if channel == KEYMISS_CHANNEL:
                self._on_keymiss(msg["data"])
            else:
                woke = True
                deadline = time.monotonic()  # drain what is queued, then go to work

    # --- requests ------------------------------------------------------------------------

    def _read(self, streams: list[str], count: int) -> list[tuple[str, str, dict]]:
        """Entries from our streams: our own pending ones first (after a restart), then new."""
        if not streams:
            return []
        pipe = self.node.pipeline(transaction=False)
        for stream in streams:
            start = "0" if stream in self._recover else ">"
            pipe.xreadgroup(keys.WORKER_GROUP, self.consumer, {stream: start}, count=count)
        entries: list[tuple[str, str, dict]] = []
        for stream, reply in zip(streams, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, Exception):
                if "NOGROUP" in str(reply):
                    self._refresh(force=True)
                    continue
                if isinstance(reply, (redis.exceptions.AskError, redis.exceptions.TryAgainError)):
                    # its slot is moving away (MOVED is an AskError): serve the others and
                    # look at the ownership again on the next turn
                    self._next_refresh = 0.0
                    continue
                raise reply
            got = 0
            for _, items in reply or []:
                for entry_id, fields in items:
                    if fields:  # a deleted entry still pending reads back empty
                        entries.append((stream, entry_id, fields))
                    else:
                        self._ack(stream, [entry_id])
                    got += 1
            if stream in self._recover and got < count:
                self._recover.discard(stream)
        return entries

    def _ack(self, stream: str, ids: list) -> None:
        pipe = self.node.pipeline(transaction=False)
        pipe.xack(stream, keys.WORKER_GROUP, *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()

    def _serve_requests(self) -> int:
        s = self.settings
        streams = [keys.request_stream(p.tag) for p in self.owned]
        batch = self._read(streams, s.max_batch)
        if batch and len(batch) < s.max_batch and s.max_wait_ms > 0:
            deadline = time.monotonic() + s.max_wait_ms / 1000
            while len(batch) < s.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._drain_events(remaining):
                    break
                batch += self._read(streams, s.max_batch - len(batch))
        if batch:
            self._answer(batch)
        return len(batch)

    def _answer(self, batch: list[tuple[str, str, dict]]) -> None:
        """Read a batch of requests in groups that fill one forward pass each, replying and
        acknowledging after every group: under load the first requests do not wait for the
        whole batch, and a request whose asker gave up meanwhile is skipped, not read."""
        started = now_ms()
        requests: list[tuple[str, str, ReadRequest]] = []
        for stream, entry_id, fields in batch:
            try:
                requests.append((stream, entry_id, ReadRequest.from_fields(fields)))
            except (KeyError, ValueError):
                log.warning("dropping malformed request %s on %s", entry_id, stream)
                self._ack(stream, [entry_id])
        live, expired = [], []
        for item in requests:
            (expired if item[2].expired(started) else live).append(item)
        passages = {}
        if live and self._reader is not None:
            passages = self._passages(sorted({pid for _, _, r in live for pid in r.pids}))

        def windows(item) -> int:
            return sum(len(passages[pid][1].windows) for pid in item[2].pids if pid in passages)

        for group in reply_groups(live, windows, self.settings.max_batch_pairs):
            group_start = now_ms()
            fresh = [r for r in group if not r[2].expired(group_start)]
            replies = self._read_passages([r for _, _, r in fresh], passages, group_start)
            if replies:
                pipe = self.client.pipeline(transaction=False)
                for request, reply in replies:
                    pipe.rpush(request.reply_to, reply.to_json())
                    pipe.expire(request.reply_to, REPLY_TTL_S)
                pipe.execute()
            self._ack_requests(group)
            self.counters.requests += len(fresh)
            self.counters.batches += 1
            size = len(fresh)
            self.counters.batch_sizes[size] = self.counters.batch_sizes.get(size, 0) + 1
        self._ack_requests(expired)

    def _ack_requests(self, items: list) -> None:
        by_stream: dict[str, list] = {}
        for stream, entry_id, _ in items:
            by_stream.setdefault(stream, []).append(entry_id)
        for stream, ids in by_stream.items():
            self._ack(stream, ids)

    def _read_passages(self, requests: list[ReadRequest], passages: dict, started: int
                       ) -> list[tuple[ReadRequest, ReadReply]]:
        def reply(r: ReadRequest, spans, pairs=0, read_ms=0.0, error=None) -> ReadReply:
            return ReadReply(
                ask_id=r.ask_id, partition=r.partition, worker=self.worker_id, spans=spans,
                batch_requests=len(requests), batch_pairs=pairs,
                queue_ms=max(0.0, started - r.enqueued_ms), read_ms=read_ms, error=error)

        if not requests:
            return []
        if self._reader is None:
            err = "no reader model on this shard (run 'shardqa model push')"
            return [(r, reply(r, [], error=err)) for r in requests]
        jobs = []
        for r in requests:
            present = [pid for pid in r.pids if pid in passages]
            jobs.append((r, present))
        t0 = time.perf_counter()
        try:
            results = self._reader.read_many(
                [(r.question, [passages[pid] for pid in present]) for r, present in jobs])
        except Exception as exc:  # noqa: BLE001 - a failing batch must not stop the shard
            log.exception("reader failed on a batch")
            self.counters.errors += 1
            return [(r, reply(r, [], error=f"reader failed: {exc}")) for r in requests]
        read_ms = (time.perf_counter() - t0) * 1000
        pairs = sum(len(passages[pid][1].windows) for _, present in jobs for pid in present)
        self.counters.pairs += pairs
        out = []
        for (r, present), spans in zip(jobs, results, strict=True):
            span_replies = [
                SpanReply(pid, s.start, s.end, s.text, float(s.score), s.null, s.log_z,
                          s.temperature)
                for pid, s in zip(present, spans, strict=True) if s is not None
            ]
            out.append((r, reply(r, span_replies, pairs, read_ms)))
        return out

    def _passages(self, pids: list[str]) -> dict:
        """pid -> (text, PassageTokens), tokenizing (and storing) any that are stale."""
        from models.tokenization import PassageTokens, tokenize_passages

        pipe = self.node.pipeline(transaction=False)
        for pid in pids:
            pipe.hmget(keys.passage(self.pmap.for_passage(pid).tag, pid), PASSAGE_FIELDS)
        found: dict = {}
        stale: list[tuple[str, str]] = []
        for pid, values in zip(pids, pipe.execute(), strict=True):
            text_raw, _title, ids, offs, wins, sig = values
            if text_raw is None:
                continue
            text = text_raw.decode("utf-8")
            tokens = None
            if sig is not None and sig.decode() == self._tok_sig(text):
                tokens = PassageTokens.unpack(
                    {"tok_ids": ids, "tok_offs": offs, "tok_wins": wins})
            if tokens is None:
                stale.append((pid, text))
            else:
                found[pid] = (text, tokens)
        if stale:
            fresh = tokenize_passages(self._loaded.tokenizer, [t for _, t in stale],
                                      self._window_tokens(), self.settings.stride)
            self._store_tokens([(pid, text, tok) for (pid, text), tok in
                                zip(stale, fresh, strict=True)])
            for (pid, text), tok in zip(stale, fresh, strict=True):
                found[pid] = (text, tok)
        return found

    def _tok_sig(self, text: str) -> str:
        return f"{self._tok_sig_prefix}:{zlib.crc32(text.encode('utf-8')):08x}"

    def _store_tokens(self, items) -> None:
        pipe = self.node.pipeline(transaction=False)
        for pid, text, tokens in items:
            tag = self.pmap.for_passage(pid).tag
            pipe.hset(keys.passage(tag, pid),
                      mapping={**tokens.pack(), "tok_sig": self._tok_sig(text)})
            pipe.hset(keys.index_windows(tag), pid, len(tokens.windows))
        pipe.execute()

    # --- ingest --------------------------------------------------------------------------

    def _serve_ingest(self) -> int:
        streams = {keys.ingest_stream(p.tag): p for p in self.owned}
        entries = self._read(list(streams), self.settings.ingest_batch)
        if not entries:
            return 0
        by_partition: dict[str, list] = {}
        for stream, entry_id, fields in entries:
            by_partition.setdefault(stream, []).append((entry_id, fields))
        changed = 0
        for stream, items in by_partition.items():
            changed += self._index_partition(streams[stream], stream, items)
        if changed:
            # Before the acks: once nothing is pending (wait_indexed), the generation has moved
            # and no cached answer from the old corpus can be served as current.
            gen = self.client.incr(keys.generation())
            self.client.publish(keys.generation_channel(), gen)
        for stream, items in by_partition.items():
            self._ack(stream, [entry_id for entry_id, _ in items])
        self.counters.ingested += len(entries)
        return len(entries)

    def _index_partition(self, partition: Partition, stream: str, items: list) -> int:
        tag = partition.tag
        latest: dict[str, str] = {}  # pid -> last op in this batch
        for _, fields in items:
            f = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes)
                 else v for k, v in fields.items()}
            if f.get("pid"):
                latest[f["pid"]] = f.get("op", "put")
        put_ids = [pid for pid, op in latest.items() if op == "put"]
        deletes = self._still_deleted(tag, [pid for pid, op in latest.items() if op == "del"])
        pipe = self.node.pipeline(transaction=False)
        for pid in put_ids:
            pipe.hmget(keys.passage(tag, pid), ("title", "text"))
        puts = {}
        texts: list[tuple[str, str]] = []
        for pid, (title, text) in zip(put_ids, pipe.execute(), strict=True):
            if text is None:
                deletes.append(pid)  # vanished meanwhile: make sure it leaves the index
                continue
            text_s = text.decode("utf-8")
            puts[pid] = index.passage_terms((title or b"").decode("utf-8"), text_s)
            texts.append((pid, text_s))
        if texts and self._reader is not None:
            from models.tokenization import tokenize_passages

            fresh = tokenize_passages(self._loaded.tokenizer, [t for _, t in texts],
                                      self._window_tokens(), self.settings.stride)
            self._store_tokens([(pid, text, tok) for (pid, text), tok in
                                zip(texts, fresh, strict=True)])
        change = index.apply(self.node, tag, puts, deletes)
        return change.indexed + change.removed

    def _still_deleted(self, tag: str, pids: list[str]) -> list[str]:
        """Drop deletes of positions the document has grown back to since (a put follows)."""
        if not pids:
            return []
        pipe = self.node.pipeline(transaction=False)
        for pid in pids:
            pipe.hget(keys.doc(tag, partitions.doc_key_of(pid)), "passages")
        keep = []
        for pid, count in zip(pids, pipe.execute(), strict=True):
            position = int(pid.rsplit(".", 1)[1])
            if count is None or int(count) <= position:
                keep.append(pid)
        return keep

    # --- keymiss -------------------------------------------------------------------------

    def _on_keymiss(self, data) -> None:
        key = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        if not key.startswith(keys.ASK_PREFIX):
            return
        with self._keymiss_lock:
            if key in self._keymiss_inflight:
                return
            self._keymiss_inflight.add(key)
        self._keymiss_pool.submit(self._answer_keymiss, key)

    def _answer_keymiss(self, key: str) -> None:
        from gears.asker import Asker, QuestionError

        try:
            if self._asker is None:
                self._asker = Asker(self.client)
            question = key[len(keys.ASK_PREFIX):]
            try:
                answer = self._asker.ask(question)
                payload = answer.to_json()
            except QuestionError as exc:
                payload = json.dumps({"error": str(exc)})
            self.client.set(key, payload, ex=self.settings.answer_ttl_s)
            self.counters.keymiss += 1
        except Exception:  # noqa: BLE001 - a failed keymiss answer must not kill the worker
            log.exception("keymiss answer for %r failed", key)
            self.counters.errors += 1
        finally:
            with self._keymiss_lock:
                self._keymiss_inflight.discard(key)


def reply_groups(items: list, windows: Callable[[object], int], budget: int) -> list[list]:
    """Consecutive items whose windows fit one forward pass (one item at least per group)."""
    groups: list[list] = []
    used = budget
    for item in items:
        n = windows(item)
        if not groups or used + n > budget:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += n
    return groups


def _owner(table: dict[tuple[int, int], dict], slot: int) -> str | None:
    """The master that owns ``slot`` in a slot table."""
    for (lo, hi), info in table.items():
        if lo <= slot <= hi:
            return info["primary"]
    return None
