"""Scale-out while serving: ``shardqa cluster add-master`` and ``shardqa cluster rebalance``.

Growing is: a new master (and its replicas) joins the cluster, its shard worker starts
(idle: it owns nothing yet), whole partitions move to it slot by slot (cluster/rebalance.py)
until masters differ by at most one, and the model copies are checked. The worker is started
before anything moves so that a partition is served the moment it lands; a partition that
becomes a master's lowest one carries a copy of the reader model with it (written under its
tag on the source before the move), so the worker finds its model right away.

This lives here, not in cluster/, because moving partitions must also care for the model
copies (models/) and the local stack's workers (shardqa/stack.py); cluster/ imports neither.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from cluster import heartbeat, partitions, rebalance
from cluster.connection import Target, connect
from cluster.errors import ClusterError
from cluster.local import LocalCluster, process_alive
from cluster.options import dir_option, target_options
from cluster.rebalance import Move
from cluster.waiting import until
from gears.settings import default_threads

console = Console(highlight=False)


@dataclass
class Growth:
    """What add-master did."""

    master: str
    replicas: list[str]
    moves: list[Move]
    synced: list[str]
    worker_pid: int | None = None


def model_copy_hook(client) -> Callable[[Move], None]:
    """``prepare`` for rebalance: give a partition that will become its destination's lowest
    one a copy of the current reader model, written on the source so it travels with the slot.

    The store keeps each master's copy under its lowest-index partition's tag; without this,
    the destination's worker would find no model (and answer with errors) until a sync.
    """
    from models import store

    def prepare(move: Move) -> None:
        pmap = partitions.load(client)
        current = store.master_tags(client).get(move.dest)
        if current is not None and pmap.by_tag(current).index < move.partition.index:
            return  # the destination keeps its copy where it is
        for kind in store.KINDS:  # the reader and the passage encoder
            try:
                meta, blob = store.read_blob(client, move.source, kind=kind)
            except store.NoModel:
                continue  # nothing of this kind pushed yet: nothing to carry
            meta.pop("master", None)
            store.place_copy(client, move.partition.tag, meta, blob)

    return prepare


def sync_models(client) -> list[str]:
    """``models.store.sync`` after a move: every master that owns a partition has the model.
    Returns the masters repaired (empty when the moves carried the copies)."""
    from models import store

    try:
        return store.sync(client)
    except store.NoModel:
        return []


def run_rebalance(client, *, batch: int = rebalance.DEFAULT_BATCH,
                  dry_run: bool = False, show_progress: bool = True) -> list[Move]:
    """Rebalance with model copies carried along, showing a progress bar of the moves."""
    moves = rebalance.rebalance(client, dry_run=True)
    if dry_run or not moves:
        return moves
    if not show_progress:
        return rebalance.rebalance(client, prepare=model_copy_hook(client), batch=batch)
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} partitions"),
                  console=console, transient=True) as bar:
        task = bar.add_task("moving partitions", total=len(moves))

        def progress(move: Move, moved: int, finished: bool) -> None:
            bar.update(task, advance=1 if finished else 0, description=(
                f"partition {move.partition.index} (slot {move.partition.slot}) "
                f"{move.source} -> {move.dest}: {moved} keys"))

        return rebalance.rebalance(client, prepare=model_copy_hook(client), batch=batch,
                                   progress=progress)


def wait_worker(client, master: str, timeout: float = 120.0) -> None:
    """Until a fresh heartbeat from the worker beside ``master`` (it may own nothing yet)."""
    until(lambda: any(b.master == master for b in heartbeat.live_workers(client).values()),
          timeout, 0.2, what=f"the worker beside {master} sent no heartbeat in {timeout:g}s "
                             "(see the logs folder in the cluster directory)")


def stack_worker_starter(directory: str, threads: int | None = None
                         ) -> Callable[[str], int] | None:
    """A function that starts a worker in the local stack (``shardqa up``), or None when the
    stack runs no workers here (workers elsewhere are started by whoever runs them)."""
    from shardqa.stack import LocalStack

    stack = LocalStack(directory)
    state = stack.state()
    if not any(pid and process_alive(pid) for pid in state.get("workers", {}).values()):
        return None

    def start(master: str) -> int:
        return stack.add_worker(master, threads or default_threads(len(state["workers"]) + 1))

    return start


def add_master(local: LocalCluster, *, replicas: int | None = None,
               start_worker: Callable[[str], int | None] | None = None,
               batch: int = rebalance.DEFAULT_BATCH, show_progress: bool = True,
               worker_timeout: float = 120.0) -> Growth:
    """Grow the local cluster by one master and move partitions to it, live.

    ``start_worker(master)`` starts the new master's worker (before anything moves); this
    waits for its heartbeat.
    """
    target = Target(directory=str(local.dir))
    new = local.add_master(replicas=replicas)
    host = local.spec().host
    master = f"{host}:{new[0].port}"
    client = connect(target)
    try:
        pid = None
        if start_worker is not None:
            pid = start_worker(master)
            wait_worker(client, master, worker_timeout)
        moves = run_rebalance(client, batch=batch, show_progress=show_progress)
        synced = sync_models(client)
    finally:
        client.close()
    return Growth(master, [f"{host}:{n.port}" for n in new[1:]], moves, synced, pid)


def print_moves(moves: list[Move], title: str) -> None:
    table = Table("partition", "tag", "slot", "from", "to", title=title)
    for m in moves:
        table.add_row(str(m.partition.index), m.partition.tag, str(m.partition.slot),
                      m.source, m.dest)
    console.print(table)


@click.command("add-master")
@click.option("--replicas", default=None, type=click.IntRange(0, 4),
              help="replicas of the new master [default: as many as the other masters have]")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="torch threads of the new worker [default: cores / masters]")
@click.option("--batch", default=rebalance.DEFAULT_BATCH, show_default=True,
              type=click.IntRange(1, 100_000), help="keys per MIGRATE while moving a slot")
@dir_option
def add_master_command(replicas, threads, batch, cluster_dir):
    """Add a master to the local cluster and move partitions to it while serving.

    Starts the new redis-server (and its replicas), joins it to the cluster, starts its
    worker if 'shardqa up' runs the workers here, moves whole partitions to it until masters
    differ by at most one partition, and checks every master has the reader model.
    """
    local = LocalCluster(cluster_dir)
    if not local.exists():
        raise ClusterError(f"no local cluster in {local.dir} (run 'shardqa cluster up'; for a "
                           "cluster started elsewhere, join the node yourself and run "
                           "'shardqa cluster rebalance --redis URL')")
    growth = add_master(local, replicas=replicas,
                        start_worker=stack_worker_starter(cluster_dir, threads), batch=batch)
    console.print(f"new master {growth.master}"
                  + (f" with replicas {', '.join(growth.replicas)}" if growth.replicas else ""))
    if growth.worker_pid is None:
        console.print(f"no local workers are running: start one beside it with "
                      f"'shardqa worker --master {growth.master}'")
    print_moves(growth.moves, f"{len(growth.moves)} partitions moved")
    if growth.synced:
        console.print(f"reader model copied to {', '.join(growth.synced)}")


@click.command("rebalance")
@click.option("--batch", default=rebalance.DEFAULT_BATCH, show_default=True,
              type=click.IntRange(1, 100_000), help="keys per MIGRATE while moving a slot")
@click.option("--dry-run", is_flag=True, help="print the moves without making them")
@target_options
def rebalance_command(batch, dry_run, target):
    """Move whole partitions between masters, live, until they differ by at most one."""
    client = connect(target)
    try:
        moves = run_rebalance(client, batch=batch, dry_run=dry_run)
        synced = [] if dry_run else sync_models(client)
    finally:
        client.close()
    if not moves:
        console.print("balanced: masters differ by at most one partition; nothing to move")
        return
    print_moves(moves, f"{len(moves)} partitions {'to move' if dry_run else 'moved'}")
    if synced:
        console.print(f"reader model copied to {', '.join(synced)}")
