"""A throwaway shardqa deployment for one bench run.

Its own cluster on free ports in a temporary folder, one real ``shardqa worker`` process per
master and the real API (``shardqa serve``, waitress), started and stopped by PID through
``shardqa.stack.LocalStack`` - exactly what ``shardqa up`` runs, so the figures are the
system's, not a mock's. A ``Testbed`` without an artifact runs workers that only index
(BM25), for the rank-at-scale figures.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.ingest_write import free_port_base, used_memory
from cluster import heartbeat, keys, partitions
from cluster.cli import bring_up
from cluster.connection import Target, connect
from cluster.errors import ShardqaError
from cluster.local import port_in_use
from cluster.waiting import until
from loaders.writer import ingest, wait_indexed
from shardqa.stack import LocalStack


class TestbedError(ShardqaError):
    """The bench deployment did not come up (workers or API silent)."""


def free_port(start: int = 18080) -> int:
    for port in range(start, start + 2000):
        if not port_in_use(port):
            return port
    raise TestbedError("no free port for the bench API")


class Testbed:
    """Cluster + workers (+ API) in ``root``; ``stop()`` ends exactly what it started."""

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, root: Path, *, masters: int = 2, threads: int = 1, api: bool = True,
                 worker_options: dict | None = None, port_base: int | None = None,
                 api_port: int | None = None):
        """``port_base`` / ``api_port``: where the nodes and the API listen (default: free
        ports found at start)."""
        self.root = Path(root)
        self.port_base, self.api_port = port_base, api_port
        self.masters = masters
        self.threads = threads
        self.with_api = api
        self.worker_options = worker_options or {}
        self.stack = LocalStack(self.root / "cluster")
        self.target = Target(directory=str(self.stack.dir))
        self.client = None
        self.api_url: str | None = None
        self.owners: list[str] = []
        self.model_version: str | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, artifact: Path | None = None, variant: str = "fp32",
              timeout: float = 180) -> Testbed:
        bring_up(self.stack.cluster, masters=self.masters,
                 port_base=self.port_base or free_port_base(self.masters))
        self.client = connect(self.target, max_connections=256)
        if artifact is not None:
            from models import store

            meta = store.push(self.client, Path(artifact), variant=variant)
            self.model_version = f"{meta['version']}:{meta['variant']}"
        pmap = partitions.load(self.client)
        self.owners = sorted(set(partitions.owners(self.client, pmap).values()))
        state = self.stack.state()
        for master in self.owners:
            args = ["worker", "--master", master, "--threads", str(self.threads),
                    "--log-level", "WARNING"]
            for flag, value in self.worker_options.items():
                args += [flag, str(value)]
            state["workers"][master] = self.stack.spawn(
                f"worker-{master.replace(':', '-')}", args)
        if self.with_api:
            port = self.api_port or free_port()
            pid = self.stack.spawn("api", ["serve", "--host", "127.0.0.1", "--port", str(port)])
            self.api_url = f"http://127.0.0.1:{port}"
            state["api"] = {"pid": pid, "url": self.api_url}
        self.stack.save(state)
        if artifact is not None:
            self.wait_model(self.model_version, timeout)
        else:
            self._wait_heartbeats(timeout)
        if self.api_url:
            self._wait_api(timeout)
        return self

    def stop(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing a dead client must not hide the result
                pass
        self.stack.down(purge=True)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- model -----------------------------------------------------------------------------

    def use_variant(self, artifact: Path, variant: str, timeout: float = 180) -> str:
        """Push ``variant`` of the artifact and wait until every worker runs it."""
        from models import store

        meta = store.push(self.client, Path(artifact), variant=variant)
        self.model_version = f"{meta['version']}:{meta['variant']}"
        self.wait_model(self.model_version, timeout)
        return self.model_version

    def wait_model(self, version: str | None, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            beats = self._beats()
            ready = [m for m in self.owners if beats.get(m, {}).get("model") == version]
            if len(ready) == len(self.owners):
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"workers did not load model {version} within {timeout:g}s "
                                   f"(see {self.stack.dir / 'logs'})")
            time.sleep(0.2)

    def _wait_heartbeats(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            beats = self._beats()
            if all(m in beats for m in self.owners):
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"workers sent no heartbeat within {timeout:g}s "
                                   f"(see {self.stack.dir / 'logs'})")
            time.sleep(0.2)

    def _wait_api(self, timeout: float) -> None:
        """Until the API serves requests (its /health judges the cluster, which the bench
        checks itself: workers with the model)."""
        def answers() -> bool:
            with urllib.request.urlopen(self.api_url + "/openapi.json", timeout=2) as resp:
                return resp.status == 200

        until(answers, timeout, 0.2, retry_on=(urllib.error.URLError, OSError),
              error=TestbedError, what=f"the API does not answer at {self.api_url} within "
              f"{timeout:g}s (see {self.stack.dir / 'logs'})")

    def _beats(self) -> dict[str, dict]:
        """Master -> the heartbeat record of its live worker."""
        return {b.master: b.as_dict() for b in heartbeat.live_workers(self.client).values()}

    # --- state -----------------------------------------------------------------------------

    def new_generation(self, settle_s: float = 0.3) -> int:
        """Invalidate the answer cache (its keys carry the generation) for every asker;
        askers re-read the generation after at most 0.25 s."""
        gen = int(self.client.incr(keys.generation()))
        time.sleep(settle_s)
        return gen

    def generation(self) -> int:
        return int(self.client.get(keys.generation()) or 0)

    def timed_ingest(self, docs) -> dict:
        """Ingest ``docs`` and wait until indexed: passages written, passages per second
        written and indexed, and Redis bytes grown per passage."""
        before = self.used_memory()
        t0 = time.perf_counter()
        report = ingest(self.client, docs, progress=False)
        written_s = time.perf_counter() - t0
        wait_indexed(self.client, timeout=900, progress=False)
        indexed_s = time.perf_counter() - t0
        grown = self.used_memory() - before
        n = report.written
        return {"documents": report.documents, "passages": n,
                "write_passages_per_s": round(n / max(written_s, 1e-9)),
                "indexed_passages_per_s": round(n / max(indexed_s, 1e-9)),
                "redis_bytes_per_passage": round(grown / max(1, n))}

    def used_memory(self) -> int:
        return used_memory(self.client)

    def worker_counters(self) -> dict[str, dict]:
        return self._beats()
