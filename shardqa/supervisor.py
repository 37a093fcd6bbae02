"""The local stack's supervisor: keeps the shard workers and the API of ``shardqa up`` running.

``shardqa up`` writes the plan (one entry per child: its command line) into the stack state
and starts this process in the background. Every tick it starts what is not running and
restarts a child that exited, with exponential backoff (0.5 s doubling to 10 s; reset after
the child ran for ``STABLE_S``), so a crash loop does not spin, and one SIGKILL costs a
worker's start-up time, not a human's attention. What it does goes to its log
(``logs/supervisor.log``); each child's pid, restarts and last exit go to the stack state and
to the Redis hash ``keys.supervised()`` that ``shardqa status`` shows.

On SIGTERM it stops supervising and exits, leaving the children to ``shardqa down`` (which
stops the supervisor first, so nothing is restarted behind its back).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from dataclasses import dataclass, field

import click

from cluster import keys
from cluster.connection import DEFAULT_DIR, Target, connect
from cluster.local import process_alive

log = logging.getLogger("shardqa.supervisor")

TICK_S = 0.2
BACKOFF_START_S = 0.5
BACKOFF_CAP_S = 10.0
#: a child that ran this long before exiting is restarted at once (its backoff is reset)
STABLE_S = 30.0


def backoff(failures: int) -> float:
    """Delay before restarting a child that failed ``failures`` times in a row."""
    return min(BACKOFF_CAP_S, BACKOFF_START_S * 2 ** max(0, failures - 1))


@dataclass
class Child:
    """One supervised process: its plan entry and what became of it."""

    name: str
    args: list[str]
    label: str
    proc: subprocess.Popen | None = None
    pid: int | None = None
    restarts: int = 0
    failures: int = 0
    last_exit: int | None = None
    started: float = 0.0
    due: float = 0.0  # when a restart may happen
    extra: dict = field(default_factory=dict)

    def exit_code(self) -> int | None | bool:
        """The exit code if it exited (None: exited, code unknown), False while it runs."""
        if self.proc is not None:
            code = self.proc.poll()
            return False if code is None else code
        if self.pid and process_alive(self.pid):
            return False
        return None

    def record(self) -> dict:
        return {"args": self.args, "label": self.label, "pid": self.pid,
                "restarts": self.restarts, "last_exit": self.last_exit,
                "started": self.started, **self.extra}


def child_label(name: str, spec: dict) -> str:
    if spec.get("master"):
        return f"worker for {spec['master']}"
    return spec.get("label") or name


class Supervisor:
    def __init__(self, stack):
        self.stack = stack
        self.children: dict[str, Child] = {}
        self.stopping = False
        self._client = None
        self._unpublished = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("supervising the stack in %s", self.stack.dir)
        while not self.stopping:
            try:
                if not self.tick():
                    log.info("the stack state is gone (shardqa down); exiting")
                    break
            except Exception:  # noqa: BLE001 - one bad tick must not end supervision
                log.exception("supervisor tick failed; trying again")
            time.sleep(TICK_S)
        log.info("stopped supervising; the children are left to 'shardqa down'")

    def _stop(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.stopping = True

    def tick(self) -> bool:
        """One look at every planned child; False once the stack state is gone."""
        if not self.stack.state_path.exists():
            return False
        plan = self.stack.state().get("children", {})
        changed = False
        now = time.monotonic()
        for name, spec in plan.items():
            child = self.children.get(name)
            if child is None:
                child = self.children[name] = Child(
                    name, list(spec["args"]), child_label(name, spec), pid=spec.get("pid"),
                    restarts=int(spec.get("restarts", 0)), last_exit=spec.get("last_exit"),
                    started=float(spec.get("started") or time.time()),
                    extra={k: spec[k] for k in ("master", "url") if k in spec})
            changed |= self.check(child, now)
        if changed:
            self.stack.update(self._write_state)
            self._unpublished = True
        if self._unpublished:
            self._publish()
        return True

    def check(self, child: Child, now: float) -> bool:
        """Start or restart ``child`` if it is not running; True if its record changed."""
        if child.pid is not None and child.due == 0.0:
            code = child.exit_code()
            if code is False:
                return False
            ran = time.time() - child.started
            child.failures = 1 if ran >= STABLE_S else child.failures + 1
            child.last_exit = code
            delay = backoff(child.failures)
            child.due = now + delay
            child.pid, child.proc = None, None
            log.warning("%s exited (code %s); restarting in %.1fs", child.label,
                        "unknown" if code is None else code, delay)
            return True
        if now < child.due:
            return False
        first = child.due == 0.0 and child.pid is None and child.last_exit is None
        child.proc = self.stack.start_process(child.name, child.args)
        child.pid, child.started, child.due = child.proc.pid, time.time(), 0.0
        if not first:
            child.restarts += 1
        log.info("%s started (pid %d%s)", child.label, child.pid,
                 "" if first else f", restart {child.restarts}")
        return True

    def _write_state(self, state: dict) -> None:
        records = state.setdefault("children", {})
        for name, child in self.children.items():
            if name not in records:
                continue  # dropped from the plan meanwhile
            records[name] = child.record()
            if "master" in child.extra:
                state.setdefault("workers", {})[child.extra["master"]] = child.pid
            elif name == "api" and state.get("api"):
                state["api"]["pid"] = child.pid

    def _publish(self) -> None:
        """Best effort: the children's records into Redis for ``shardqa status``."""
        try:
            if self._client is None:
                self._client = connect(Target(directory=str(self.stack.dir)),
                                       socket_timeout=2.0)
            self._client.hset(keys.supervised(), mapping={
                name: json.dumps({k: v for k, v in child.record().items() if k != "args"})
                for name, child in self.children.items()})
            self._unpublished = False
        except Exception as exc:  # noqa: BLE001 - Redis down must never stop supervision
            log.debug("cannot publish the children's state yet: %s", exc)
            self._client = None


@click.command("supervise", hidden=True)
@click.option("--dir", "cluster_dir", envvar="SHARDQA_DIR", default=DEFAULT_DIR,
              type=click.Path(file_okay=False))
def supervise_command(cluster_dir):
    """Run the local stack's supervisor in the foreground (``shardqa up`` starts it)."""
    from shardqa.stack import LocalStack

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    Supervisor(LocalStack(cluster_dir)).run()
