"""``shardqa up`` / ``shardqa down``: everything of a local run, started and stopped by PID.

The local stack is the cluster (cluster/local.py), one shard worker per master and the API,
each a background process whose PID and log live in the cluster folder (``stack.json``,
``logs/``). ``down`` stops exactly those PIDs, then the cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click
from rich.console import Console

from cluster import partitions
from cluster.cli import bring_up
from cluster.connection import DEFAULT_DIR, Target, connect
from cluster.local import ClusterError, LocalCluster, port_in_use, process_alive
from gears.settings import default_threads

console = Console(highlight=False)
STACK_FILE = "stack.json"


class LocalStack:
    def __init__(self, directory: str | os.PathLike):
        self.cluster = LocalCluster(directory)
        self.dir = self.cluster.dir

    @property
    def state_path(self) -> Path:
        return self.dir / STACK_FILE

    def state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {"workers": {}, "api": None}

    def save(self, state: dict) -> None:
        self.state_path.write_text(json.dumps(state, indent=2))

    def spawn(self, name: str, args: list[str]) -> int:
        logs = self.dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardqa.cli", *args], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "SHARDQA_DIR": str(self.dir)},
        )
        log.close()
        return proc.pid

    def up(self, *, masters: int, port_base: int, api_port: int | None, api_host: str,
           threads: int | None, model: str | None, timeout: float = 120) -> dict:
        running = self.cluster.exists() and len(self.cluster.running_nodes()) == len(
            self.cluster.spec().nodes)
        if not running:
            bring_up(self.cluster, masters=masters, port_base=port_base)
        target = Target(directory=str(self.dir))
        client = connect(target)
        ensure_model(client, model)
        state = self.state()
        owners = sorted(set(partitions.owners(client, partitions.load(client)).values()))
        if threads is None:
            threads = default_threads(len(owners))
        for master in owners:
            pid = state["workers"].get(master)
            if pid and process_alive(pid):
                continue
            state["workers"][master] = self.spawn(
                f"worker-{master.replace(':', '-')}",
                ["worker", "--master", master, "--threads", str(threads)])
        if api_port:
            api = state.get("api")
            if not (api and process_alive(api["pid"])):
                if port_in_use(api_port, api_host):
                    raise ClusterError(f"API port {api_port} is already in use; "
                                       "choose another --api-port")
                pid = self.spawn("api", ["serve", "--host", api_host, "--port", str(api_port)])
                state["api"] = {"pid": pid, "url": f"http://{api_host}:{api_port}"}
        self.save(state)
        wait_healthy(client, owners, state.get("api"), timeout)
        return state

    def down(self, purge: bool = False) -> list[str]:
        state = self.state()
        stopped = []
        pids = list(state.get("workers", {}).items())
        if state.get("api"):
            pids.append(("api", state["api"]["pid"]))
        for name, pid in pids:
            if pid and process_alive(pid):
                os.kill(pid, signal.SIGTERM)
                stopped.append(name)
        deadline = time.monotonic() + 10
        for _, pid in pids:
            while pid and process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid and process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.state_path.unlink(missing_ok=True)
        if self.cluster.exists():
            stopped += [f"redis:{p}" for p in self.cluster.down(purge=purge)]
        return stopped


def ensure_model(client, model: str | None) -> None:
    """Push ``model`` (an exported artifact), or the default reader if none is in the cluster."""
    from models import store

    if model is None:
        if store.list_models(client):
            return
        from models.default import default_artifact

        model = str(default_artifact())
    console.print(f"pushing reader model {model}")
    store.push(client, Path(model))


def wait_healthy(client, masters: list[str], api: dict | None, timeout: float) -> None:
    from cluster import heartbeat

    deadline = time.monotonic() + timeout
    while True:
        beats = {b.master: b for b in heartbeat.live_workers(client).values()}
        fresh = [m for m in masters if m in beats and beats[m].model]
        api_ok = api is None or _http_ok(api["url"] + "/health")
        if len(fresh) == len(masters) and api_ok:
            return
        if time.monotonic() > deadline:
            missing = sorted(set(masters) - set(fresh))
            raise ClusterError(
                f"not healthy after {timeout:g}s: workers without heartbeat or model: {missing}"
                + ("" if api_ok else "; the API does not answer /health")
                + " (see the logs folder in the cluster directory)")
        time.sleep(0.2)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@click.command("up")
@click.option("--corpus", multiple=True, type=click.Path(exists=True),
              help="ingest these files/folders once everything is up")
@click.option("--model", default=None, type=click.Path(exists=True, file_okay=False),
              help="exported reader artifact to push [default: the bundled reader]")
@click.option("--masters", default=3, show_default=True, type=click.IntRange(1, 64))
@click.option("--api-port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              envvar="SHARDQA_API_PORT", help="0: no API")
@click.option("--api-host", default="127.0.0.1", show_default=True, envvar="SHARDQA_API_HOST")
@click.option("--port-base", default=7000, show_default=True, type=click.IntRange(1024, 65000),
              envvar="SHARDQA_PORT_BASE")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="torch threads per worker [default: cores / masters]")
@click.option("--dir", "cluster_dir", envvar="SHARDQA_DIR", default=DEFAULT_DIR,
              show_default=True, type=click.Path(file_okay=False))
def up_command(corpus, model, masters, api_port, api_host, port_base, threads, cluster_dir):
    """Start everything locally in the background: cluster, workers, API."""
    stack = LocalStack(cluster_dir)
    state = stack.up(masters=masters, port_base=port_base, api_port=api_port or None,
                     api_host=api_host, threads=threads, model=model)
    console.print(f"workers: {', '.join(state['workers'])}")
    if state.get("api"):
        console.print(f"API: {state['api']['url']}  (try: curl '{state['api']['url']}"
                      "/qa?q=your+question')")
    if corpus:
        from loaders.documents import read_documents
        from loaders.writer import ingest, wait_indexed

        client = connect(Target(directory=cluster_dir))
        ingest(client, read_documents(list(corpus)))
        wait_indexed(client)


@click.command("down")
@click.option("--purge", is_flag=True, help="also delete the cluster's data")
@click.option("--dir", "cluster_dir", envvar="SHARDQA_DIR", default=DEFAULT_DIR,
              show_default=True, type=click.Path(file_okay=False))
def down_command(purge, cluster_dir):
    """Stop the API, the workers and the cluster that 'shardqa up' started."""
    stopped = LocalStack(cluster_dir).down(purge=purge)
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
