"""``shardqa up`` / ``shardqa down``: everything of a local run, started and stopped by PID.

The local stack is the cluster (cluster/local.py), one shard worker per master and the API,
each a background process whose PID and log live in the cluster folder (``stack.json``,
``logs/``). ``up`` writes the plan of workers and API into the state and leaves starting
and restarting them to the supervisor (shardqa/supervisor.py), itself a background process.
``down`` stops the supervisor first, then exactly the children's PIDs, then the cluster.
"""

from __future__ import annotations

import contextlib
import fcntl
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

from api.settings import ServeSettings
from cluster import partitions
from cluster.cli import bring_up
from cluster.connection import Target, connect
from cluster.errors import ClusterError
from cluster.local import LocalCluster, port_in_use, process_alive
from cluster.options import dir_option, masters_option, port_base_option
from cluster.waiting import until
from gears.settings import default_threads
from models.variants import READER_VARIANT, READER_VARIANTS, choose_reader_variant

console = Console(highlight=False)
STACK_FILE = "stack.json"
#: how long ``up`` waits for the supervisor to start a child it was just told about
START_TIMEOUT_S = 30.0


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
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)

    @contextlib.contextmanager
    def _locked(self):
        with open(self.dir / "stack.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def update(self, change) -> dict:
        """Read, change (``change(state)`` in place) and write the state under a file lock:
        ``up``, ``add-master`` and the supervisor all write it."""
        with self._locked():
            state = self.state()
            change(state)
            self.save(state)
            return state

    def start_process(self, name: str, args: list[str]) -> subprocess.Popen:
        logs = self.dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardqa.cli", *args], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "SHARDQA_DIR": str(self.dir)},
        )
        log.close()
        return proc

    def spawn(self, name: str, args: list[str]) -> int:
        """Start one unsupervised background process; its PID."""
        return self.start_process(name, args).pid

    def supervisor_pid(self) -> int | None:
        pid = (self.state().get("supervisor") or {}).get("pid")
        return pid if pid and process_alive(pid) else None

    def ensure_supervisor(self) -> int:
        pid = self.supervisor_pid()
        if pid is None:
            pid = self.spawn("supervisor", ["supervise", "--dir", str(self.dir)])
            self.update(lambda state: state.update(supervisor={"pid": pid}))
        return pid

    def plan(self, children: dict[str, dict]) -> dict:
        """Add children (name -> {args, master|url}) to the supervisor's plan, keeping the
        records of those already planned."""
        def change(state: dict) -> None:
            planned = state.setdefault("children", {})
            for name, spec in children.items():
                if name not in planned:  # adopt a live process an older ``up`` started
                    pid = _unplanned_pid(state, name, spec)
                    planned[name] = {"pid": pid, "restarts": 0, "last_exit": None}
                planned[name].update(spec)
            state.setdefault("workers", {})
        return self.update(change)

    def wait_started(self, names: list[str], timeout: float = START_TIMEOUT_S) -> dict:
        """The state once the supervisor has given every named child a live PID."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            children = state.get("children", {})
            if all((children.get(n) or {}).get("pid") and process_alive(children[n]["pid"])
                   for n in names):
                return state
            if time.monotonic() > deadline or self.supervisor_pid() is None:
                raise ClusterError(f"the supervisor did not start {', '.join(names)} in "
                                   f"{timeout:g}s (see logs/supervisor.log)")
            time.sleep(0.1)

    def add_worker(self, master: str, threads: int) -> int:
        """Start (supervised) the worker beside ``master``; its PID."""
        name = worker_name(master)
        self.plan({name: {"master": master, "args": worker_args(master, threads)}})
        self.ensure_supervisor()
        return self.wait_started([name])["children"][name]["pid"]

    def up(self, *, masters: int, port_base: int, api_port: int | None, api_host: str,
           threads: int | None, model: str | None, encoder: str | None = None,
           reader_variant: str | None = None, timeout: float = 120) -> dict:
        running = self.cluster.exists() and len(self.cluster.running_nodes()) == len(
            self.cluster.spec().nodes)
        if not running:
            bring_up(self.cluster, masters=masters, port_base=port_base)
        target = Target(directory=str(self.dir))
        client = connect(target)
        ensure_model(client, model, encoder, reader_variant)
        owners = sorted(set(partitions.owners(client, partitions.load(client)).values()))
        if threads is None:
            threads = default_threads(len(owners))
        children = {worker_name(m): {"master": m, "args": worker_args(m, threads)}
                    for m in owners}
        if api_port:
            url = f"http://{api_host}:{api_port}"
            state = self.state()
            api_pid = (_unplanned_pid(state, "api", {})
                       or ((state.get("children") or {}).get("api") or {}).get("pid"))
            if not (api_pid and process_alive(api_pid)):
                if port_in_use(api_port, api_host):
                    raise ClusterError(f"API port {api_port} is already in use; "
                                       "choose another --api-port")
            children["api"] = {"url": url, "label": f"API on {url}",
                               "args": ["serve", "--host", api_host, "--port", str(api_port)]}
            self.update(lambda state: state.update(api={**(state.get("api") or {}),
                                                        "url": url}))
            # the write-behind job of the question log the API writes (records/)
            children["sync"] = {"label": "question log sync", "args": ["sync"]}
        self.plan(children)
        self.ensure_supervisor()
        state = self.wait_started(list(children))
        if api_port:
            state["api"] = {"pid": state["children"]["api"]["pid"], "url": url}
        wait_healthy(client, owners, state.get("api"), timeout, self)
        return self.state()

    def down(self, purge: bool = False) -> list[str]:
        stopped = []
        supervisor = self.supervisor_pid()
        if supervisor:
            stop_pids([supervisor])  # first, so it restarts nothing we stop below
            stopped.append("supervisor")
        state = self.state()
        pids = list(state.get("workers", {}).items())
        if state.get("api"):
            pids.append(("api", state["api"]["pid"]))
        sync = (state.get("children") or {}).get("sync") or {}
        if sync.get("pid"):
            pids.append(("sync", sync["pid"]))
        for name, pid in pids:
            if pid and process_alive(pid):
                stopped.append(name)
        stop_pids([pid for _, pid in pids])
        self.state_path.unlink(missing_ok=True)
        if self.cluster.exists():
            if supervisor:
                _forget_supervised(self.dir)
            stopped += [f"redis:{p}" for p in self.cluster.down(purge=purge)]
        return stopped


def worker_name(master: str) -> str:
    return f"worker-{master.replace(':', '-')}"


def worker_args(master: str, threads: int) -> list[str]:
    return ["worker", "--master", master, "--threads", str(threads)]


def _unplanned_pid(state: dict, name: str, spec: dict) -> int | None:
    """The live PID the state records for a child outside the plan (None if none)."""
    if spec.get("master"):
        pid = (state.get("workers") or {}).get(spec["master"])
    else:
        pid = (state.get("api") or {}).get("pid") if name == "api" else None
    return pid if pid and process_alive(pid) else None


def stop_pids(pids: list[int | None]) -> None:
    """SIGTERM, up to 10 s to exit, then SIGKILL."""
    live = [pid for pid in pids if pid and process_alive(pid)]
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for pid in live:
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _forget_supervised(directory: Path) -> None:
    """Best effort: drop the supervisor's records from Redis, so status shows no ghosts."""
    from cluster import keys

    try:
        client = connect(Target(directory=str(directory)), socket_timeout=2.0)
        client.delete(keys.supervised())
        client.close()
    except Exception:  # noqa: BLE001 - a cluster already down has nothing to forget
        pass


def ensure_model(client, model: str | None, encoder: str | None = None,
                 reader_variant: str | None = None) -> None:
    """Push ``model`` (an exported reader artifact), or the default reader if no reader is in
    the cluster or a ``reader_variant`` is asked for, in that variant (default
    models.variants.READER_VARIANT); push ``encoder`` (an exported encoder artifact, int8), or
    the default passage encoder if none is in the cluster, so answers are hybrid ("none":
    push none)."""
    from models import store

    kinds = {row.get("kind") or "reader" for row in store.list_models(client)}
    if model is None and ("reader" not in kinds or reader_variant is not None):
        from models.default import default_artifact

        model = str(default_artifact())
    if model is not None:
        variant = artifact_variant(Path(model), reader_variant)
        console.print(f"pushing reader model {model} ({variant})")
        store.push(client, Path(model), variant=variant)
    if encoder == NO_ENCODER or (encoder is None and "encoder" in kinds):
        return
    push_encoder(client, encoder)


def artifact_variant(artifact: Path, requested: str | None) -> str:
    """The variant of ``artifact`` to push for ``requested`` (None: READER_VARIANT): "auto"
    is bf16 on a fast-bf16 CPU if the artifact has it (else fp32, said); bf16 on a CPU
    without fast bf16 is refused (models/variants.py)."""
    from models.export import read_metadata

    wanted = requested or READER_VARIANT
    variant = choose_reader_variant(wanted)
    if wanted == "auto" and variant not in read_metadata(artifact).get("variants", {}):
        console.print(f"this CPU has fast bf16 but {artifact} has no bf16 variant (export it "
                      "with --bf16): pushing fp32")
        return "fp32"
    return variant


#: ``--encoder none``: push no passage encoder (questions are ranked by BM25 alone)
NO_ENCODER = "none"


def push_encoder(client, encoder: str | None) -> None:
    """Push ``encoder`` or the default passage encoder, int8 (about twice as fast as fp32,
    cosine to fp32 >= 0.99: bench/results/retrieval-fusion-2026-12-02.json)."""
    from cluster.errors import ShardqaError
    from models import store
    from models.default import default_encoder_artifact

    try:
        artifact = Path(encoder) if encoder else default_encoder_artifact()
    except ShardqaError as exc:  # the encoder package is missing: BM25 alone, said once
        console.print(f"[yellow]no passage encoder ({exc}); questions are ranked by BM25[/]")
        return
    console.print(f"pushing passage encoder {artifact} (int8)")
    store.push(client, artifact, variant="int8")


def wait_healthy(client, masters: list[str], api: dict | None, timeout: float,
                 stack: LocalStack | None = None) -> None:
    """Until every master's worker heartbeats with a model and the API answers /health.

    With ``stack``, a heartbeat counts only from the worker's current PID and while that
    process lives: a worker killed a second ago still has a fresh heartbeat."""
    from cluster import heartbeat

    def unhealthy() -> list[str]:
        beats = {b.master: b for b in heartbeat.live_workers(client).values()}
        pids = stack.state().get("workers", {}) if stack is not None else {}
        return sorted(m for m in masters
                      if not (m in beats and beats[m].model
                              and (m not in pids or (beats[m].pid == pids[m]
                                                     and process_alive(pids[m])))))

    def healthy() -> bool:
        return not unhealthy() and (api is None or _http_ok(api["url"] + "/health"))

    until(healthy, timeout, 0.2, what=lambda: (
        f"not healthy after {timeout:g}s: workers without heartbeat or model: {unhealthy()}"
        + ("" if api is None or _http_ok(api["url"] + "/health")
           else "; the API does not answer /health")
        + " (see the logs folder in the cluster directory)"))


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def load_corpus(client, documents, *, source: str = "", progress: bool = True,
                announce: str | None = None):
    """Ingest ``documents``, then wait until every passage is indexed *and* embedded: the
    ingest entries cover what this ingest wrote, the re-embed job the passages stored before
    the encoder was pushed (a corpus loaded again on an older cluster: all unchanged).
    ``announce`` is printed once the ingest has written passages. Returns the ingest report."""
    from gears.cli import follow_embedding
    from loaders.writer import ingest, wait_indexed

    report = ingest(client, documents, source=source, progress=progress)
    if announce and report.written:
        console.print(announce)
    wait_indexed(client, progress=progress)
    follow_embedding(client)
    return report


#: ``--reader-variant`` of ``up`` and ``demo``
reader_variant_option = click.option(
    "--reader-variant", default=None, type=click.Choice(READER_VARIANTS),
    envvar="SHARDQA_READER_VARIANT",
    help=f"which variant of the reader to push; auto: bf16 on a CPU with fast bf16 "
         f"(avx512_bf16/amx_bf16), else fp32 [default: {READER_VARIANT}, unless a reader "
         "is pushed already] [env SHARDQA_READER_VARIANT]")


@click.command("up")
@click.option("--corpus", multiple=True, type=click.Path(exists=True),
              help="ingest these files/folders once everything is up")
@click.option("--model", default=None, type=click.Path(exists=True, file_okay=False),
              help="exported reader artifact to push [default: the bundled reader]")
@click.option("--encoder", default=None, metavar="DIRECTORY|none",
              help="exported passage encoder to push (int8) [default: the default encoder, "
                   "unless one is pushed]; none: push none (questions ranked by BM25 alone)")
@reader_variant_option
@masters_option
@click.option("--api-port", default=ServeSettings.port, show_default=True,
              type=click.IntRange(0, 65535),
              envvar="SHARDQA_API_PORT", help="0: no API")
@click.option("--api-host", default=ServeSettings.host, show_default=True,
              envvar="SHARDQA_API_HOST")
@port_base_option
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="torch threads per worker [default: cores / masters]")
@dir_option
def up_command(corpus, model, encoder, reader_variant, masters, api_port, api_host, port_base,
               threads, cluster_dir):
    """Start everything locally in the background: cluster, workers, API."""
    if encoder not in (None, NO_ENCODER) and not Path(encoder).is_dir():
        raise click.BadParameter(f"{encoder!r} is not a folder (nor 'none')",
                                 param_hint="--encoder")
    stack = LocalStack(cluster_dir)
    state = stack.up(masters=masters, port_base=port_base, api_port=api_port or None,
                     api_host=api_host, threads=threads, model=model, encoder=encoder,
                     reader_variant=reader_variant)
    console.print(f"workers: {', '.join(state['workers'])}")
    if state.get("api"):
        console.print(f"API: {state['api']['url']}  (try: curl '{state['api']['url']}"
                      "/qa?q=your+question')")
        console.print(f"page: {state['api']['url']}/  (open it in a browser)")
    if corpus:
        from loaders.documents import read_documents

        load_corpus(connect(Target(directory=cluster_dir)), read_documents(list(corpus)))


@click.command("down")
@click.option("--purge", is_flag=True, help="also delete the cluster's data")
@dir_option
def down_command(purge, cluster_dir):
    """Stop the API, the workers and the cluster that 'shardqa up' started."""
    stopped = LocalStack(cluster_dir).down(purge=purge)
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
