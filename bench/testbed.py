"""A throwaway shardqa deployment for one bench run.

Its own cluster on free ports in a temporary folder, one real ``shardqa worker`` process per
master and the real API (``shardqa serve``, waitress), started and stopped by PID through
``shardqa.stack.LocalStack`` - exactly what ``shardqa up`` runs, so the figures are the
system's, not a mock's. A ``Testbed`` without an artifact runs workers that only index
(BM25), for the rank-at-scale figures; with an encoder too, they embed every passage, and
it can run several APIs with their own options (e.g. ``--retrieval bm25`` beside the
default hybrid) on the same cluster. A ``supervised`` Testbed is started by
``LocalStack.up`` itself, as ``shardqa up`` starts a stack: the supervisor starts (and
restarts) the workers, the API and the question-log sync; the chaos run needs that.
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
from shardqa.stack import LocalStack, stop_pids


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
                 worker_options: dict | None = None, replicas: int = 0,
                 supervised: bool = False, apis: dict[str, list[str]] | None = None,
                 port_base: int | None = None, api_port: int | None = None,
                 partition_count: int | None = None):
        """``partition_count``: partitions of the new cluster (default: the shipped
        count). ``apis``: name -> extra ``shardqa serve`` options, one API each (default: one
        API, "api", with none; ``api=False``: no API). ``port_base`` / ``api_port``: where
        the nodes and the first API listen (default: free ports found at start)."""
        self.root = Path(root)
        self.port_base, self.api_port = port_base, api_port
        self.masters = masters
        self.replicas = replicas
        self.supervised = supervised
        self.threads = threads
        self.apis = (apis or {"api": []}) if api else {}
        self.worker_options = worker_options or {}
        self.partition_count = partition_count or partitions.DEFAULT_PARTITIONS
        self.stack = LocalStack(self.root / "cluster")
        self.target = Target(directory=str(self.stack.dir))
        self.client = None
        self.api_url: str | None = None  # the first API's
        self.api_urls: dict[str, str] = {}
        self._extra_api_pids: list[int] = []  # LocalStack.down stops the first API only
        self.owners: list[str] = []
        self.model_version: str | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, artifact: Path | None = None, variant: str = "fp32",
              timeout: float = 180, encoder: Path | None = None) -> Testbed:
        """``encoder``: an exported passage encoder, pushed (int8) before the workers start,
        so they embed what is ingested and the APIs can rank hybrid."""
        from models import store

        bring_up(self.stack.cluster, masters=self.masters, replicas=self.replicas,
                 port_base=self.port_base or free_port_base(self.masters * (1 + self.replicas)),
                 partition_count=self.partition_count)
        self.client = connect(self.target, max_connections=256)
        if self.supervised:
            return self._start_supervised(artifact, timeout)
        if encoder is not None:
            store.push(self.client, Path(encoder), variant="int8")
        if artifact is not None:
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
        for name, options in self.apis.items():
            self._spawn_api(state, name, options)
        self.stack.save(state)
        if artifact is not None:
            self.wait_model(self.model_version, timeout)
        else:
            self._wait_heartbeats(timeout)
        for url in self.api_urls.values():
            self._wait_api(url, timeout)
        return self

    def _start_supervised(self, artifact: Path | None, timeout: float) -> Testbed:
        """``shardqa up`` on the cluster just started: the reader ``artifact`` (fp32, or the
        bundled one), no passage encoder (BM25 ranking: ingest need not embed), workers and
        API under the supervisor; returns once all are healthy."""
        from shardqa.stack import NO_ENCODER

        state = self.stack.up(masters=self.masters, port_base=0,
                              api_port=free_port() if self.apis else None,
                              api_host="127.0.0.1", threads=self.threads,
                              model=str(artifact) if artifact else None, encoder=NO_ENCODER,
                              timeout=timeout)
        self.owners = sorted(state["workers"])
        self.api_url = (state.get("api") or {}).get("url")
        self.api_urls = {"api": self.api_url} if self.api_url else {}
        self.model_version = next(iter(self._beats().values()), {}).get("model")
        return self

    def _spawn_api(self, state: dict, name: str, options: list[str]) -> None:
        """Start ``shardqa serve`` on a free port; the stack's state names the first one
        "api" (what ``shardqa down`` stops) and the others ``api-NAME``."""
        port = (self.api_port if self.api_port and not self.api_urls else
                free_port(max([18080, *(int(u.rsplit(":", 1)[1]) + 1
                                        for u in self.api_urls.values())])))
        key = "api" if not self.api_urls else f"api-{name}"
        pid = self.stack.spawn(key, ["serve", "--host", "127.0.0.1", "--port", str(port),
                                     *options])
        url = f"http://127.0.0.1:{port}"
        self.api_urls[name] = url
        self.api_url = self.api_url or url
        state[key] = {"pid": pid, "url": url}
        if key != "api":
            self._extra_api_pids.append(pid)

    def stop(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing a dead client must not hide the result
                pass
        stop_pids(self._extra_api_pids)
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

    def _wait_api(self, url: str, timeout: float) -> None:
        """Until the API serves requests (its /health judges the cluster, which the bench
        checks itself: workers with the model)."""
        def answers() -> bool:
            with urllib.request.urlopen(url + "/openapi.json", timeout=2) as resp:
                return resp.status == 200

        until(answers, timeout, 0.2, retry_on=(urllib.error.URLError, OSError),
              error=TestbedError, what=f"the API does not answer at {url} within "
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
