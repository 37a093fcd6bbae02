"""The faults of the chaos run (issue 14), each injected into a running local stack.

A fault breaks one thing the way a user meets it, waits until the stack has mended (or a
timeout passes) and says what it saw: an ``Injected`` record. Faults take the chaos run
(bench/chaos.py) for its testbed and for ``run.recovered(partitions, at)``: seconds from the
injection to the first right answer from those partitions.

Targets are the stack's workers' masters (``shardqa up`` keys each worker by the master it was
started beside) in ``run.targets``, busiest first: the worker and poison faults hit the first,
the master fault the second, the model fault the third, so no fault lands on a shard another
one has just broken and each hits partitions that answer questions.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from cluster import heartbeat, keys, partitions
from cluster.cli import bring_up
from cluster.connection import connect
from cluster.errors import ClusterError
from cluster.local import process_alive
from cluster.waiting import until

#: how long a fault may take to mend before the run notes it and moves on
MEND_TIMEOUT_S = 60.0
#: what a probe may raise while a node is down or a slot moves: "not yet"
NOT_YET = (redis.RedisError, redis.exceptions.RedisClusterException, ClusterError, OSError)


@dataclass
class Injected:
    """One fault as injected: what, where, when (monotonic), and what was seen after."""

    fault: str
    target: str
    partitions: list[int]
    at: float
    details: dict = field(default_factory=dict)


def seconds_until(probe: Callable[[], object], since: float, timeout: float) -> float | None:
    """Seconds from ``since`` until ``probe()`` is true (errors count as "not yet"); None if
    it was not true within ``timeout`` seconds from now."""
    try:
        until(probe, timeout, 0.1, what="", retry_on=NOT_YET, error=TimeoutError)
    except TimeoutError:
        return None
    return round(time.monotonic() - since, 2)


def worker_of(run, master: str) -> int:
    """The PID the stack state gives ``master``'s worker (the supervisor keeps it current)."""
    return run.bed.stack.state()["workers"][master]


def serving(run, master: str, old_pid: int, with_reader: bool = True) -> bool:
    """A worker other than ``old_pid`` heartbeats for ``master`` (with a verified reader)."""
    pid = worker_of(run, master)
    if pid == old_pid or not process_alive(pid):
        return False
    return any(b.pid == pid and (bool(b.model) == with_reader)
               for b in heartbeat.live_workers(run.bed.client).values())


def partitions_of(run, node: str) -> list[int]:
    """The partitions whose slots ``node`` owns now."""
    owners = partitions.owners(run.bed.client, run.pmap)
    return sorted(i for i, master in owners.items() if master == node)


def kill_worker(run) -> Injected:
    """SIGKILL a shard worker: the supervisor starts a new one (goal: serving in 15 s)."""
    master = run.targets[0]
    pid, hit = worker_of(run, master), partitions_of(run, master)
    at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    again = seconds_until(lambda: serving(run, master, pid), at, run.s.mend_timeout_s)
    return Injected("kill a shard worker (SIGKILL)", master, hit, at,
                    {"serving_again_s": again, "recovered_s": run.recovered(hit, at)})


def kill_master(run) -> Injected:
    """SIGKILL a Redis master: its replica takes over; then the old node rejoins."""
    master = run.targets[1]
    local = run.bed.stack.cluster
    node = next(n for n in local.spec().nodes if master.endswith(f":{n.port}"))
    hit = partitions_of(run, master)
    at = time.monotonic()
    os.kill(local.pid_of(node), signal.SIGKILL)
    promoted = seconds_until(lambda: not set(hit) & set(partitions_of(run, master)), at,
                             run.s.mend_timeout_s)
    details = {"replica_promoted_s": promoted, "recovered_s": run.recovered(hit, at)}
    try:
        bring_up(local)  # the killed node comes back, as a replica of the promoted one
        details["rejoined_as_replica"] = True
    except ClusterError as exc:
        details["rejoined_as_replica"] = f"no: {exc}"
    return Injected("kill a Redis master (SIGKILL)", master, hit, at, details)


def poison_entry(run) -> Injected:
    """XADD, as the api user, a read request whose passage ids do not parse (the issue's
    entry): it is dead-lettered and the worker carries on."""
    master = run.targets[0]
    index = run.busiest_partition(partitions_of(run, master))
    tag = run.pmap[index].tag
    api = connect(run.bed.target.as_role("api"))
    pid = worker_of(run, master)
    before = run.bed.client.xlen(keys.dead_letters(tag))  # 0 while there is no stream
    at = time.monotonic()
    api.xadd(keys.request_stream(tag), {
        "ask": "x", "partition": str(index), "q": "who", "pids": "zz",
        "reply": "sq:reply:{x}", "deadline": "9999999999999", "enqueued": "0"})
    api.close()
    dead = seconds_until(lambda: run.bed.client.xlen(keys.dead_letters(tag)) > before, at,
                         run.s.mend_timeout_s)
    details = {"dead_lettered_s": dead, "recovered_s": run.recovered([index], at),
               "worker_survived": worker_of(run, master) == pid and process_alive(pid)}
    return Injected("poison request entry (XADD as api)", f"partition {index} ({tag})",
                    [index], at, details)


def corrupt_model(run) -> Injected:
    """SETRANGE a byte of the reader's first chunk on a master, as admin, and restart its
    worker: the new one finds no verified reader and says so; ``model sync`` repairs the
    copy and the worker, retrying, loads it."""
    from models import store

    master = run.targets[2]
    client = run.bed.client
    pointer = store.current_meta(client, master)
    chunk = keys.model_chunk(store.tag_for(client, master), pointer["name"],
                             pointer["version"], 0)
    pid, hit = worker_of(run, master), partitions_of(run, master)
    at = time.monotonic()
    client.setrange(chunk, 5000, b"X")
    os.kill(pid, signal.SIGTERM)  # a restart: the supervisor starts it again
    reported = seconds_until(lambda: serving(run, master, pid, with_reader=False), at,
                             run.s.mend_timeout_s)
    health = run.health_status()
    repaired_at = time.monotonic()
    repaired = store.sync(client)
    details = {"reported_s": reported, "health_status_while_corrupt": health,
               "repaired": repaired, "repaired_after_s": round(repaired_at - at, 2),
               "serving_again_s": seconds_until(lambda: serving(run, master, pid), at,
                                                run.s.mend_timeout_s),
               "recovered_s": run.recovered(hit, at)}
    return Injected("corrupt model chunk (SETRANGE as admin) + worker restart + model sync",
                    master, hit, at, details)


def slow_clients(run, count: int = 100, trickle_s: float = 1.0) -> Injected:
    """``count`` connections that send a request line and then a header byte a second: the
    API drops each once its request is overdue (``--request-timeout``)."""
    host, port = run.bed.api_url.rsplit("/", 1)[-1].rsplit(":", 1)
    at = time.monotonic()
    socks = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        socks.append(sock)
    stop = threading.Event()
    closed_at: dict[int, float] = {}
    thread = threading.Thread(target=_trickle, args=(socks, closed_at, stop, trickle_s),
                              daemon=True)
    thread.start()
    t0 = time.perf_counter()
    health = run.health_status()
    health_ms = round((time.perf_counter() - t0) * 1000, 1)
    details = {"connections": count, "health_status_meanwhile": health,
               "health_ms_meanwhile": health_ms,
               "recovered_s": run.recovered(list(range(len(run.pmap))), at)}
    dropped = seconds_until(lambda: len(closed_at) == count, at, run.s.mend_timeout_s)
    stop.set()
    thread.join(timeout=10)
    for sock in socks:
        sock.close()
    details.update(dropped_by_server=len(closed_at), all_dropped_s=dropped)
    return Injected(f"{count} slow clients (a header byte a second)", run.bed.api_url,
                    [], at, details)


def _trickle(socks: list[socket.socket], closed_at: dict[int, float], stop: threading.Event,
             every_s: float) -> None:
    """Send each open socket a header byte every ``every_s``; note when the server closed it."""
    while not stop.is_set() and len(closed_at) < len(socks):
        for i, sock in enumerate(socks):
            if i not in closed_at and (closed_by_server(sock) or not _send(sock, b"X")):
                closed_at[i] = time.monotonic()
        stop.wait(every_s)


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed (or reset) the connection."""
    sock.setblocking(False)
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


#: the faults by name (``ChaosSettings.faults``), in the order the run injects them
FAULTS: dict[str, Callable[..., Injected]] = {
    "worker": kill_worker, "master": kill_master, "poison": poison_entry,
    "model": corrupt_model, "slow": slow_clients,
}
