"""What the cluster's servers can do: the Redis version and whether vector sets exist.

Redis 8 has vector sets (VADD/VSIM/...) built in; Redis 7 and Valkey do not. shardqa ranks
by BM25 alone where any master lacks them, so the probe asks every master: a partition on a
master without vector sets could not hold its vectors. ``COMMAND INFO`` needs no key and no
module command, so every ACL user may run it.
"""

from __future__ import annotations

import subprocess

import redis

#: The vector-set commands shardqa uses; the probe looks for all of them.
VECTOR_SET_COMMANDS = ("VADD", "VREM", "VSIM", "VEMB", "VCARD", "VINFO", "VISMEMBER")


def node_has_vector_sets(conn: redis.Redis) -> bool:
    """True if this one server knows every vector-set command."""
    # one string, so redis-py's COMMAND parser (which fails on unknown commands) is skipped
    reply = conn.execute_command("COMMAND INFO", *VECTOR_SET_COMMANDS)
    return bool(reply) and all(entry is not None for entry in reply)


def vector_sets(client) -> bool:
    """True if every master of the cluster (a RedisCluster) has vector sets."""
    primaries = client.get_primaries()
    return bool(primaries) and all(
        node_has_vector_sets(client.get_redis_connection(node)) for node in primaries)


def server_versions(client) -> dict[str, str]:
    """"host:port" -> redis_version of every node (Valkey reports its Redis-compatible one)."""
    return {node.name: str(client.get_redis_connection(node).info("server")
                           .get("redis_version", "?"))
            for node in client.get_nodes()}


def binary_has_vector_sets(server: str) -> bool:
    """True if a ``redis-server`` binary is Redis 8 or later (vector sets built in), from its
    ``--version``; Valkey and Redis 7 report False. Decides the ACL rules before it starts."""
    try:
        out = subprocess.run([server, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    if not out.startswith("Redis server"):
        return False
    version = next((w[2:] for w in out.split() if w.startswith("v=")), "0")
    major = version.split(".")[0]
    return major.isdigit() and int(major) >= 8
