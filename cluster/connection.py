"""How every shardqa command finds its cluster: one rule, used everywhere.

``--redis redis://HOST:PORT`` (or ``SHARDQA_REDIS_URL``) names a cluster started elsewhere;
otherwise ``--dir`` (or ``SHARDQA_DIR``, default ``.shardqa/cluster``) names a local cluster
folder made by ``shardqa cluster up``, whose ``cluster.json`` lists the nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import redis
from redis.cluster import ClusterNode, RedisCluster

from cluster.local import ClusterError, LocalCluster

DEFAULT_DIR = ".shardqa/cluster"


@dataclass(frozen=True)
class Target:
    """Where the cluster is: a URL, or a local cluster folder."""

    url: str | None = None
    directory: str = DEFAULT_DIR

    @classmethod
    def from_env(cls, url: str | None = None, directory: str | None = None) -> Target:
        return cls(
            url=url or os.environ.get("SHARDQA_REDIS_URL") or None,
            directory=directory or os.environ.get("SHARDQA_DIR") or DEFAULT_DIR,
        )

    def startup_nodes(self) -> list[tuple[str, int]]:
        if self.url:
            parsed = urlparse(self.url)
            if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
                raise ClusterError(f"--redis must look like redis://HOST:PORT, got {self.url!r}")
            return [(parsed.hostname, parsed.port or 6379)]
        local = LocalCluster(self.directory)
        if not local.exists():
            raise ClusterError(
                f"no cluster found: {Path(self.directory).resolve()} has no local cluster "
                "(start one with 'shardqa cluster up', or pass --redis redis://HOST:PORT)"
            )
        return local.startup_nodes()

    def credentials(self) -> dict:
        if self.url:
            parsed = urlparse(self.url)
            creds = {}
            if parsed.username:
                creds["username"] = unquote(parsed.username)
            if parsed.password:
                creds["password"] = unquote(parsed.password)
            return creds
        return {}


def connect(target: Target | None = None, *, decode_responses: bool = False,
            socket_timeout: float | None = 10.0, **kwargs) -> RedisCluster:
    """A RedisCluster client for the target; raises ClusterError if it cannot be reached."""
    target = target or Target.from_env()
    nodes = [ClusterNode(host, port) for host, port in target.startup_nodes()]
    try:
        return RedisCluster(
            startup_nodes=nodes, decode_responses=decode_responses,
            socket_timeout=socket_timeout, socket_connect_timeout=3.0,
            **target.credentials(), **kwargs,
        )
    except (redis.RedisError, OSError) as exc:
        where = ", ".join(f"{n.host}:{n.port}" for n in nodes)
        raise ClusterError(f"cannot reach the Redis Cluster at {where}: {exc}") from exc


def node_client(target: Target, host: str, port: int, **kwargs) -> redis.Redis:
    """A plain client for one node (pub/sub and stream reads beside a shard)."""
    return redis.Redis(host=host, port=port, **target.credentials(), **kwargs)
