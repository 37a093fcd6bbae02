"""The command-line options several commands share, declared once.

``--dir`` (a local cluster folder) and ``--redis`` (a cluster started elsewhere), flags first
then ``SHARDQA_DIR`` / ``SHARDQA_REDIS_URL``, with the default of cluster.connection; and the
shape of a new local cluster (``--port-base``, ``--masters``), with ClusterSpec's defaults.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import click

from cluster.connection import DEFAULT_DIR, Target
from cluster.local import ClusterSpec

#: The ACL user (cluster.acl) a command connects as on a local secured cluster; every other
#: command manages the cluster, models or corpus and connects as ``admin``. With --redis the
#: URL's user (or SHARDQA_REDIS_USER) decides.
# eval ingests its file in open mode (unless --no-ingest), so it runs as admin
COMMAND_ROLES = {"worker": "worker", "serve": "api", "ask": "api"}

dir_option: Callable = click.option(
    "--dir", "cluster_dir", envvar="SHARDQA_DIR", default=DEFAULT_DIR, show_default=True,
    type=click.Path(file_okay=False), help="local cluster folder [env SHARDQA_DIR]")
"""``--dir``: passes ``cluster_dir`` (commands that manage a local cluster's processes)."""

port_base_option: Callable = click.option(
    "--port-base", default=ClusterSpec.port_base, show_default=True,
    type=click.IntRange(1024, 65000), envvar="SHARDQA_PORT_BASE",
    help="port of a new local cluster's first node; the others follow [env SHARDQA_PORT_BASE]")
"""``--port-base``: passes ``port_base`` (commands that start a local cluster)."""

masters_option: Callable = click.option(
    "--masters", default=ClusterSpec.masters, show_default=True, type=click.IntRange(1, 64),
    help="masters of a new local cluster (one shard worker each)")
"""``--masters``: passes ``masters``."""


log_level_option: Callable = click.option(
    "--log-level", default="INFO", show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
"""``--log-level``: passes ``log_level`` (long-running processes: worker, sync)."""


def start_logging(level: str | int) -> None:
    """The log lines of a long-running process: time, logger, level, message."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def target_options(func: Callable) -> Callable:
    """--dir / --redis; passes ``target``, whose role is the command's entry in COMMAND_ROLES
    (admin otherwise)."""

    @click.option("--redis", "redis_url", envvar="SHARDQA_REDIS_URL", default=None,
                  metavar="URL", help="redis://[USER:PASSWORD@]HOST:PORT of a cluster started "
                  "elsewhere [env SHARDQA_REDIS_URL; SHARDQA_REDIS_USER/_PASSWORD]")
    @dir_option
    @functools.wraps(func)
    def wrapper(*args, redis_url, cluster_dir, **kwargs):
        role = COMMAND_ROLES.get(click.get_current_context().info_name, "admin")
        return func(*args, target=Target(url=redis_url, directory=cluster_dir, role=role),
                    **kwargs)

    return wrapper
