"""Least privilege: the Redis ACL users of a shardqa cluster and what each may do.

``shardqa cluster up`` generates one password per user into ``users.json`` (mode 0600) in
the cluster folder and writes the same aclfile into every node, with the ``default`` user
turned off, so nothing reaches a node without a password. Three users:

* ``admin``: cluster and model management, ingestion, replication (``masteruser``);
* ``worker``: the shard workers: every shardqa key (partition vector sets too) except the
  model copies (read-only) and the partition map (read-only), the keyspace-event channels;
  no ACL, CONFIG, FLUSHALL, KEYS or FUNCTION;
* ``api``: what ``Asker.ask`` and /health need and nothing else: read the answer cache and
  write it, call the rank/stats/ask functions, add read requests, wait for and delete
  replies, read passage text, read the partition map, generation and heartbeats, and search
  the partition vector sets (``VSIM`` only).

Key patterns are built from the key schema (cluster.keys) with ``*`` for the variable parts.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

from cluster import keys
from cluster.errors import ShardqaError

USERS_FILE = "users.json"
ROLES = ("admin", "worker", "api")

# --- key patterns from the key schema ------------------------------------------------------

_ANY = "*"
_META = f"{keys.PREFIX}:{{{keys.META_TAG}}}:*"
_MODEL = f"{keys.model_prefix(_ANY)}*"
#: every index key of a partition (postings, lengths, df, stats, per-passage terms, ...)
_INDEX = [keys.index_term_prefix(_ANY).removesuffix("t:") + "*"]
_PASSAGES = keys.passage(_ANY, _ANY)
_VECTORS = keys.vectors(_ANY)
_DOCS = keys.doc(_ANY, _ANY)
_INGEST = keys.ingest_stream(_ANY)
_REQUESTS = keys.request_stream(_ANY)
_DEAD = keys.dead_letters(_ANY)
_ANSWERS = f"{keys.PREFIX}:ans:*"
_ASK = keys.ask_key(_ANY)
_REPLIES = keys.reply_list(_ANY)

#: commands every client library needs to connect to a cluster and find its slots
_CONNECT = ["+hello", "+auth", "+ping", "+echo", "+client|setname",
            "+client|id", "+command", "+cluster|slots", "+cluster|shards", "+cluster|info",
            "+cluster|nodes", "+cluster|myid", "+readonly", "+info"]


def rules(role: str, vector_sets: bool = True) -> list[str]:
    """The ACL rules of one user, without its password.

    ``vector_sets``: the server has them (Redis 8); older servers refuse the unknown
    command names in a rule, so their users get no vector-set rules.
    """
    if role == "admin":
        return ["~*", "&*", "+@all"]
    if role == "worker":
        writable = [_PASSAGES, _DOCS, _INGEST, _REQUESTS, _DEAD, *_INDEX, _VECTORS, _ANSWERS,
                    _ASK, _REPLIES, keys.generation(), keys.workers()]
        read_only = [_MODEL, keys.partition_map()]
        return ([f"~{p}" for p in writable] + [f"%R~{p}" for p in read_only]
                + [f"&{c}" for c in ("__keyevent@0__:*", keys.generation_channel())]
                + ["+@all", "-@dangerous", "-@admin", "-function", "-script", "-eval",
                   "-evalsha", "-eval_ro", "-evalsha_ro", "-migrate", *_CONNECT])
    if role == "api":
        return ([f"~{_ANSWERS}", f"~{_REQUESTS}", f"~{_REPLIES}"]
                + [f"%R~{p}" for p in (*_INDEX, _PASSAGES, _META, _ASK, _INGEST)]
                + ["+get", "+set", "+fcall", "+fcall_ro", "+xadd", "+blpop", "+del", "+hmget",
                   "+hget", "+hlen", "+hvals", "+hgetall", "+zrange", "+zcard", "+zmscore",
                   "+xrange", "+xinfo|groups", "+expire", *_CONNECT]
                # Redis 8 declares every vector-set key read-write, so a read-only key
                # pattern cannot allow VSIM: a selector allows VSIM, and only VSIM, on them
                + ([f"(~{_VECTORS} +vsim)"] if vector_sets else []))
    raise ShardqaError(f"unknown role {role!r}; one of {', '.join(ROLES)}")


def generate() -> dict[str, str]:
    """A fresh random password per role."""
    return {role: secrets.token_urlsafe(24) for role in ROLES}


def save(directory: Path, passwords: dict[str, str]) -> Path:
    """Write users.json readable by its owner only (created 0600, never world-readable)."""
    path = Path(directory) / USERS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"users": {r: {"password": p} for r, p in passwords.items()}}, out, indent=2)
    os.chmod(path, 0o600)
    return path


def load(directory: Path) -> dict[str, str] | None:
    """role -> password from users.json, or None for a cluster made without ACLs."""
    path = Path(directory) / USERS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return {role: str(v["password"]) for role, v in data["users"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ShardqaError(f"{path} is unreadable or malformed: {exc}") from exc


def aclfile(passwords: dict[str, str], vector_sets: bool = True) -> str:
    """The aclfile every node loads: our users with hashed passwords; ``default`` off.

    ``default`` is off (no connection can use it, every client must AUTH) but keeps all
    permissions: Redis 7.0 replays MULTI/EXEC from the AOF at start as ``default`` and
    checks its permissions at EXEC, so a ``default`` without them silently drops every
    transaction in the AOF (the whole index) on restart.
    """
    unusable = hashlib.sha256(secrets.token_bytes(32)).hexdigest()
    lines = [f"user default off resetpass #{unusable} ~* &* +@all"]
    for role in ROLES:
        digest = hashlib.sha256(passwords[role].encode()).hexdigest()
        lines.append(" ".join(["user", role, "on", f"#{digest}", "resetkeys", "resetchannels",
                               "-@all", *rules(role, vector_sets)]))
    return "\n".join(lines) + "\n"
