"""``shardqa cluster``: start, stop and inspect the cluster; the shared --dir/--redis options."""

from __future__ import annotations

import functools

import click
from rich.console import Console
from rich.table import Table

from cluster import acl, capabilities, functions, partitions
from cluster.connection import DEFAULT_DIR, Target, connect
from cluster.local import ClusterError, LocalCluster

console = Console(highlight=False)


#: The ACL user (cluster.acl) a command connects as on a local secured cluster; every other
#: command manages the cluster, models or corpus and connects as ``admin``. With --redis the
#: URL's user (or SHARDQA_REDIS_USER) decides.
# eval ingests its file in open mode (unless --no-ingest), so it runs as admin
COMMAND_ROLES = {"worker": "worker", "serve": "api", "ask": "api"}


def target_options(func):
    """--dir / --redis, flags first then SHARDQA_DIR / SHARDQA_REDIS_URL; passes ``target``.

    The target's role is the command's entry in COMMAND_ROLES (admin otherwise).
    """

    @click.option("--redis", "redis_url", envvar="SHARDQA_REDIS_URL", default=None,
                  metavar="URL", help="redis://[USER:PASSWORD@]HOST:PORT of a cluster started "
                  "elsewhere [env SHARDQA_REDIS_URL; SHARDQA_REDIS_USER/_PASSWORD]")
    @click.option("--dir", "cluster_dir", envvar="SHARDQA_DIR", default=DEFAULT_DIR,
                  show_default=True, type=click.Path(file_okay=False),
                  help="local cluster folder [env SHARDQA_DIR]")
    @functools.wraps(func)
    def wrapper(*args, redis_url, cluster_dir, **kwargs):
        role = COMMAND_ROLES.get(click.get_current_context().info_name, "admin")
        return func(*args, target=Target(url=redis_url, directory=cluster_dir, role=role),
                    **kwargs)

    return wrapper


@click.group("cluster")
def cluster_group() -> None:
    """Start, stop and inspect the Redis Cluster."""


@cluster_group.command("up")
@click.option("--masters", default=3, show_default=True, type=click.IntRange(1, 64))
@click.option("--replicas", default=0, show_default=True, type=click.IntRange(0, 4))
@click.option("--port-base", default=7000, show_default=True, type=click.IntRange(1024, 65000),
              envvar="SHARDQA_PORT_BASE")
@click.option("--partitions", "partition_count", default=partitions.DEFAULT_PARTITIONS,
              show_default=True, type=click.IntRange(1, 4096),
              help="number of partitions (fixed when the cluster is created)")
@click.option("--node-timeout", default=5000, show_default=True, type=click.IntRange(100),
              help="cluster-node-timeout in ms")
@click.option("--dir", "cluster_dir", envvar="SHARDQA_DIR", default=DEFAULT_DIR,
              show_default=True, type=click.Path(file_okay=False))
def up_command(masters, replicas, port_base, partition_count, node_timeout, cluster_dir):
    """Start a local cluster of real redis-server processes (or restart a stopped one)."""
    local = LocalCluster(cluster_dir)
    if local.exists() and len(local.running_nodes()) == len(local.spec().nodes):
        console.print(f"cluster in {local.dir} is already running; nothing to do")
        print_summary(Target(directory=cluster_dir))
        return
    bring_up(local, masters, replicas, port_base, partition_count, node_timeout)
    print_summary(Target(directory=cluster_dir))
    if local.passwords():
        console.print(f"ACL users admin, worker, api (default user off); passwords in "
                      f"{local.dir / acl.USERS_FILE} (mode 0600)")


def bring_up(local: LocalCluster, masters: int = 3, replicas: int = 0, port_base: int = 7000,
             partition_count: int = partitions.DEFAULT_PARTITIONS,
             node_timeout: int = 5000, secure: bool = True) -> None:
    """Start the nodes, then make sure the partition map and functions are in place.

    A new cluster is secured with ACL users (cluster.acl) unless ``secure`` is False.
    """
    local.up(masters=masters, replicas=replicas, port_base=port_base,
             node_timeout_ms=node_timeout, secure=secure)
    client = connect(Target(directory=str(local.dir)))
    try:
        partitions.ensure(client, partition_count)
        functions.load(client)  # libraries are not persisted without RDB: load at every start
    finally:
        client.close()


@cluster_group.command("init")
@click.option("--partitions", "partition_count", default=partitions.DEFAULT_PARTITIONS,
              show_default=True, type=click.IntRange(1, 4096))
@target_options
def init_command(partition_count, target):
    """Prepare a cluster started elsewhere: partition map and functions library."""
    client = connect(target)
    pmap = partitions.ensure(client, partition_count)
    functions.load(client)
    console.print(f"{len(pmap)} partitions; functions library v{functions.version()} loaded")


@cluster_group.command("down")
@click.option("--purge", is_flag=True, help="also delete the cluster's data")
@click.option("--dir", "cluster_dir", envvar="SHARDQA_DIR", default=DEFAULT_DIR,
              show_default=True, type=click.Path(file_okay=False))
def down_command(purge, cluster_dir):
    """Stop exactly the redis-server processes this folder started (data kept unless --purge)."""
    local = LocalCluster(cluster_dir)
    if not local.exists():
        raise ClusterError(f"no local cluster in {local.dir}")
    stopped = local.down(purge=purge)
    what = "stopped " + (", ".join(map(str, stopped)) if stopped else "nothing (not running)")
    console.print(what + ("; data purged" if purge else "; data kept"))


@cluster_group.command("load-functions")
@target_options
def load_functions_command(target):
    """Load (REPLACE) the Lua functions library on every master."""
    client = connect(target)
    functions.load(client)
    versions = functions.loaded_versions(client)
    console.print(f"functions library v{functions.version()} on {len(versions)} masters")


@cluster_group.command("status")
@target_options
def status_command(target):
    """Nodes, slots, memory, and whether the functions library is loaded."""
    print_summary(target)


@cluster_group.command("partitions")
@target_options
def partitions_command(target):
    """Print partition -> tag -> slot -> master."""
    client = connect(target)
    pmap = partitions.load(client)
    owner = partitions.owners(client, pmap)
    table = Table("partition", "tag", "slot", "master")
    for p in pmap:
        table.add_row(str(p.index), p.tag, str(p.slot), owner.get(p.index, "?"))
    console.print(table)


def print_summary(target: Target) -> None:
    client = connect(target)
    try:
        versions = functions.loaded_versions(client)
        table_slots = partitions.slot_table(client)
        try:
            pmap = partitions.load(client)
            owner = partitions.owners(client, pmap)
        except partitions.NoPartitionMap:
            pmap, owner = None, {}
        servers = capabilities.server_versions(client)
        table = Table("node", "role", "redis", "slots", "partitions", "memory", "functions",
                      title="shardqa cluster")
        for node in client.get_nodes():
            conn = client.get_redis_connection(node)
            info = conn.info("memory")
            ranges = [f"{lo}-{hi}" for (lo, hi), v in sorted(table_slots.items())
                      if v["primary"] == node.name]
            parts = sum(1 for m in owner.values() if m == node.name)
            version = versions.get(node.name)
            table.add_row(
                node.name, node.server_type or "?", servers.get(node.name, "?"),
                " ".join(ranges) or "-",
                str(parts) if node.server_type == "primary" else "-",
                info.get("used_memory_human", "?"),
                (f"v{version}" if version else "missing") if node.server_type == "primary"
                else "-",
            )
        console.print(table)
        if pmap is not None:
            console.print(f"{len(pmap)} partitions; cluster_state ok")
        console.print("vector sets: " + ("yes (hybrid retrieval possible)"
                                         if capabilities.vector_sets(client)
                                         else "no (Redis < 8 or Valkey: BM25 only)"))
    finally:
        client.close()
