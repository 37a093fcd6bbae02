"""Shared fixtures: a real 3-master Redis Cluster from redis-server, started once a session."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster import functions, partitions
from cluster.cli import bring_up
from cluster.connection import Target, connect
from cluster.local import LocalCluster
from tests.model_fixtures import *  # noqa: F403 - the tiny reader model fixtures

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


_PORTS = random.Random(os.getpid() ^ time.time_ns())


def free_port_base(count: int) -> int:
    """A base port with ``count`` consecutive free ports (and their bus ports, +10000).

    Drawn below Linux's ephemeral range (32768+), so outgoing connections never take them,
    and checked by binding.
    """
    for _ in range(500):
        base = _PORTS.randrange(10000, 22000 - count)
        if all(_bindable(p) and _bindable(p + 10000) for p in range(base, base + count)):
            return base
    raise RuntimeError("no free ports found")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class ClusterHandle:
    local: LocalCluster
    target: Target

    def client(self, **kwargs):
        return connect(self.target, **kwargs)

    def client_as(self, role: str, **kwargs):
        """A client as one of the cluster's ACL users (admin, worker, api)."""
        return connect(self.target.as_role(role), **kwargs)

    @property
    def masters(self) -> list[str]:
        spec = self.local.spec()
        return [f"{spec.host}:{n.port}" for n in spec.nodes if n.role == "master"]

    def flush(self) -> None:
        """Empty every master, keeping the partition map and the functions library."""
        client = self.client()
        try:
            pmap = partitions.load(client)
            for node in client.get_primaries():
                client.get_redis_connection(node).flushall()
            client.set("sq:{sq}:partitions", pmap.to_json())
            functions.load(client)
        finally:
            client.close()


def start_cluster(tmp: Path, masters: int = 3, replicas: int = 0, **kwargs) -> ClusterHandle:
    base = free_port_base(masters * (1 + replicas))
    local = LocalCluster(tmp / "cluster")
    bring_up(local, masters=masters, replicas=replicas, port_base=base, **kwargs)
    return ClusterHandle(local, Target(directory=str(local.dir)))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> ClusterHandle:
    """One real 3-master cluster for the whole session; always torn down."""
    handle = start_cluster(tmp_path_factory.mktemp("shardqa"))
    try:
        yield handle
    finally:
        handle.local.down(purge=True)


@pytest.fixture
def cluster(redis_cluster) -> ClusterHandle:
    """The session cluster, emptied for this test."""
    redis_cluster.flush()
    return redis_cluster


def run_cli(*args: str, env: dict | None = None, timeout: float = 300,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``shardqa`` console entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "shardqa.cli", *args], capture_output=True, text=True,
        env=full_env, timeout=timeout, cwd=env.get("CWD") if env else None,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"shardqa {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_up(base: int, api_port: int, *args: str, env: dict,
           timeout: float = 240) -> subprocess.CompletedProcess:
    """``shardqa up`` on these ports with ``args``; fails the test unless it started."""
    up = run_cli("up", "--port-base", str(base), "--api-port", str(api_port), *args, env=env,
                 timeout=timeout)
    assert up.returncode == 0, up.stdout + up.stderr
    return up


class WorkerPool:
    """Real shard worker processes (``shardqa worker``), one per master by default."""

    def __init__(self, handle: ClusterHandle, tmp: Path, **options):
        self.handle = handle
        self.tmp = tmp
        self.options = {"--threads": "1", "--max-wait-ms": "5", **options}
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, master: str) -> subprocess.Popen:
        args = [sys.executable, "-m", "shardqa.cli", "worker", "--master", master,
                "--dir", self.handle.target.directory, "--log-level", "WARNING"]
        for flag, value in self.options.items():
            args += [flag, str(value)]
        log = open(self.tmp / f"worker-{master.replace(':', '-')}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        self.procs[master] = proc
        return proc

    def start_all(self) -> WorkerPool:
        for master in self.handle.masters:
            self.start(master)
        return self

    def kill(self, master: str, sig: int = 9) -> None:
        proc = self.procs.pop(master)
        proc.send_signal(sig)
        proc.wait(timeout=20)

    def stop_all(self) -> None:
        for master in list(self.procs):
            proc = self.procs.pop(master)
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wait_ready(self, timeout: float = 60, need_model: bool = True) -> None:
        """Until every master's worker has a fresh heartbeat (and a model, if asked)."""
        from cluster import heartbeat

        client = self.handle.client()
        deadline = time.monotonic() + timeout
        while True:
            pids = {p.pid for p in self.procs.values()}
            ready = {b.master for b in heartbeat.live_workers(client).values()
                     if (b.model or not need_model) and b.pid in pids}
            if ready >= set(self.procs):
                return
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-2000:] for p in self.tmp.glob("worker-*.log"))
                raise AssertionError(f"workers not ready: {ready}\n{logs}")
            time.sleep(0.1)


@pytest.fixture
def workers(cluster, tmp_path):
    pool = WorkerPool(cluster, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


def start_pipeline(handle: ClusterHandle, pool: WorkerPool, artifact: Path):
    """Push the tiny reader, start one worker per master, ingest the test corpus."""
    from loaders.writer import ingest, wait_indexed
    from models import store
    from tests.corpus import CORPUS

    client = handle.client()
    store.push(client, artifact)
    pool.start_all()
    pool.wait_ready()
    ingest(client, CORPUS, progress=False)
    wait_indexed(client, timeout=60, progress=False)
    return client


def wait_reembedded(client, timeout: float = 120) -> None:
    """Until every partition's vectors are made by the current passage encoder (issue 13:
    the workers embed an existing corpus, or re-embed it, after an encoder push)."""
    from cluster.waiting import until
    from gears import health

    until(lambda: not health.status(client)["reembed"]["partitions"], timeout, 0.1,
          what=lambda: f"not re-embedded: {health.status(client)['reembed']}",
          error=AssertionError)


@pytest.fixture
def pipeline(cluster, workers, tiny_artifact):
    """A fresh pipeline for tests that break things (kill workers, change the corpus)."""
    return start_pipeline(cluster, workers, tiny_artifact)


@pytest.fixture(scope="module")
def shared_pipeline(redis_cluster, tiny_artifact, tmp_path_factory):
    """One pipeline for a whole module of tests that only ask questions."""
    redis_cluster.flush()
    pool = WorkerPool(redis_cluster, tmp_path_factory.mktemp("workers"))
    try:
        yield start_pipeline(redis_cluster, pool, tiny_artifact)
    finally:
        pool.stop_all()
