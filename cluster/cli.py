"""``shardqa cluster``: start, stop and inspect the cluster (shared options: cluster.options)."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from cluster import acl, capabilities, functions, partitions
from cluster.connection import Target, connect
from cluster.errors import ClusterError
from cluster.local import ClusterSpec, LocalCluster
from cluster.options import dir_option, masters_option, port_base_option, target_options

console = Console(highlight=False)


@click.group("cluster")
def cluster_group() -> None:
    """Start, stop and inspect the Redis Cluster."""


@cluster_group.command("up")
@masters_option
@click.option("--replicas", default=ClusterSpec.replicas, show_default=True,
              type=click.IntRange(0, 4))
@port_base_option
@click.option("--partitions", "partition_count", default=partitions.DEFAULT_PARTITIONS,
              show_default=True, type=click.IntRange(1, 4096),
              help="number of partitions (fixed when the cluster is created)")
@click.option("--node-timeout", default=ClusterSpec.node_timeout_ms, show_default=True,
              type=click.IntRange(100),
              help="cluster-node-timeout in ms")
@dir_option
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
        console.print(f"ACL users admin, worker, api, reader (default user off); passwords in "
                      f"{local.dir / acl.USERS_FILE} (mode 0600)")


def bring_up(local: LocalCluster, masters: int = ClusterSpec.masters,
             replicas: int = ClusterSpec.replicas, port_base: int = ClusterSpec.port_base,
             partition_count: int = partitions.DEFAULT_PARTITIONS,
             node_timeout: int = ClusterSpec.node_timeout_ms, secure: bool = True) -> None:
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
@dir_option
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
