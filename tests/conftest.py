"""Shared fixtures: a real 3-master Redis Cluster from redis-server, started once a session."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster import functions, partitions
from cluster.cli import bring_up
from cluster.connection import Target, connect
from cluster.local import LocalCluster, port_in_use
from tests.model_fixtures import *  # noqa: F403 - the tiny reader model fixtures

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port_base(count: int) -> int:
    """A base port with ``count`` consecutive free ports after it (and their bus ports +10000)."""
    rng = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(200):
        base = rng.randrange(20000, 50000)
        ports = list(range(base, base + count))
        if not any(port_in_use(p) or port_in_use(p + 10000) for p in ports):
            return base
    raise RuntimeError("no free ports found")


@dataclass
class ClusterHandle:
    local: LocalCluster
    target: Target

    def client(self, **kwargs):
        return connect(self.target, **kwargs)

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
