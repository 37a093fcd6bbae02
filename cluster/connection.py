"""How every shardqa command finds its cluster: one rule, used everywhere.

``--redis redis://HOST:PORT`` (or ``SHARDQA_REDIS_URL``) names a cluster started elsewhere;
otherwise ``--dir`` (or ``SHARDQA_DIR``, default ``.shardqa/cluster``) names a local cluster
folder made by ``shardqa cluster up``, whose ``cluster.json`` lists the nodes.

Credentials: a secured cluster (cluster.acl) has users ``admin``, ``worker``, ``api`` and
``reader`` (redis-cli).
Each command connects as the role it needs (``Target.role``): for a local folder the
password comes from its ``users.json``; for a cluster elsewhere from the URL
(``redis://api:PASSWORD@host:port``) or ``SHARDQA_REDIS_USER`` / ``SHARDQA_REDIS_PASSWORD``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import redis
from redis.cluster import ClusterNode, RedisCluster

from cluster import acl
from cluster.errors import ClusterError
from cluster.local import LocalCluster

DEFAULT_DIR = ".shardqa/cluster"


@dataclass(frozen=True)
class Target:
    """Where the cluster is (a URL, or a local cluster folder) and as which user to connect."""

    url: str | None = None
    directory: str = DEFAULT_DIR
    role: str = "admin"

    def as_role(self, role: str) -> Target:
        """The same cluster, connecting as another of the ACL users."""
        if role not in acl.ROLES:
            raise ClusterError(f"unknown role {role!r}; one of {', '.join(acl.ROLES)}")
        return Target(url=self.url, directory=self.directory, role=role)

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
        """username/password keyword arguments for redis-py (empty for an open cluster)."""
        creds = {}
        if self.url:
            parsed = urlparse(self.url)
            user = os.environ.get("SHARDQA_REDIS_USER")
            password = os.environ.get("SHARDQA_REDIS_PASSWORD")
            if parsed.username:
                user = unquote(parsed.username)
            if parsed.password:
                password = unquote(parsed.password)
            if user:
                creds["username"] = user
            if password:
                creds["password"] = password
            return creds
        passwords = acl.load(Path(self.directory))
        if passwords:
            if self.role not in passwords:
                raise ClusterError(f"{Path(self.directory) / acl.USERS_FILE} has no "
                                   f"{self.role!r} user")
            creds = {"username": self.role, "password": passwords[self.role]}
        return creds


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
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        if isinstance(exc, redis.AuthenticationError) or "username-password" in str(exc):
            who = target.credentials().get("username", "default")
            raise ClusterError(
                f"the Redis Cluster refused user {who!r}: wrong password or user disabled "
                "(check the URL, SHARDQA_REDIS_USER/SHARDQA_REDIS_PASSWORD or users.json)"
            ) from exc
        where = ", ".join(f"{n.host}:{n.port}" for n in nodes)
        raise ClusterError(f"cannot reach the Redis Cluster at {where}: {exc}") from exc


def node_client(target: Target, host: str, port: int, **kwargs) -> redis.Redis:
    """A plain client for one node (pub/sub and stream reads beside a shard)."""
    return redis.Redis(host=host, port=port, **target.credentials(), **kwargs)
