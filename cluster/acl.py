"""Least privilege: the Redis ACL users of a shardqa cluster and what each may do.

``shardqa cluster up`` generates one password per user into ``users.json`` (mode 0600) in
the cluster folder and writes the same aclfile into every node, with the ``default`` user
turned off, so nothing reaches a node without a password. Five users:

* ``admin``: cluster and model management, ingestion, replication (``masteruser``);
* ``worker``: the shard workers: every shardqa key (partition vector sets and the sets a
  re-embed builds too) except the model copies (read-only) and the partition map
  (read-only), the keyspace-event channels;
  no ACL, CONFIG, FLUSHALL, KEYS or FUNCTION; no SCAN/RANDOMKEY over all key names;
  PUBLISH only on the generation channel (never a forged keyspace event);
* ``api``: what ``Asker.ask`` and /health need and nothing else: read the answer cache and
  write it, call the rank/stats/ask functions, add read requests (XADD only: a request
  stream cannot be deleted, overwritten or expired by the API; a Redis 7 ACL selector),
  wait for and delete replies, read passage text, read the partition map, generation and
  heartbeats, read the model copies (the question encoder), search the partition vector
  sets (``VSIM`` only); on the question log stream
  only XADD, XLEN and XINFO GROUPS (an ACL selector);
* ``reader``: people and scripts at redis-cli: read answers (``GET sq:qa:...``, the answer
  cache), ``FCALL_RO`` the read-only functions (ask, rank, stats, shardqa_version), read
  passages, ``VSIM`` on vector sets where the server has them; nothing that writes shared
  state (a ``GET`` that misses ``sq:qa:...`` still makes the owning worker answer it);
* ``sync``: the write-behind job (``shardqa sync``): reads and acknowledges the question log
  stream through its consumer group, nothing else.

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
ROLES = ("admin", "worker", "api", "reader", "sync")

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
#: vector sets (one per partition), read by VSIM
_VECTORS = f"{keys.PREFIX}:*:vs"
#: the vector set a re-embed builds (the worker's alone; renamed over the partition's set)
_NEXT_VECTORS = keys.vectors_next(_ANY)
_LOG = keys.log_stream()

#: commands every client library needs to connect to a cluster and find its slots
_CONNECT = ["+hello", "+auth", "+ping", "+echo", "+client|setname",
            "+client|id", "+command", "+cluster|slots", "+cluster|shards", "+cluster|info",
            "+cluster|nodes", "+cluster|myid", "+readonly", "+info"]


def rules(role: str, *, vector_sets: bool = False) -> list[str]:
    """The ACL rules of one user, without its password.

    ``vector_sets``: the server knows VSIM (Redis 8); an ACL rule naming a command the server
    does not know makes it refuse the whole aclfile, so it is added only then.
    """
    if role == "admin":
        return ["~*", "&*", "+@all"]
    if role == "worker":
        writable = [_PASSAGES, _DOCS, _INGEST, _REQUESTS, _DEAD, *_INDEX, _VECTORS,
                    _NEXT_VECTORS, _ANSWERS, _ASK, _REPLIES, keys.generation(), keys.workers()]
        read_only = [_MODEL, keys.partition_map()]
        return ([f"~{p}" for p in writable] + [f"%R~{p}" for p in read_only]
                + [f"&{c}" for c in ("__keyevent@0__:*", keys.generation_channel())]
                + ["+@all", "-@dangerous", "-@admin", "-function", "-script", "-eval",
                   "-evalsha", "-eval_ro", "-evalsha_ro", "-migrate", "-scan", "-randomkey",
                   "-publish", "-spublish", *_CONNECT]
                + [f"(&{keys.generation_channel()} +publish)"])
    if role == "api":
        return ([f"~{_ANSWERS}", f"~{_REPLIES}"]
                + [f"%R~{p}" for p in (*_INDEX, _PASSAGES, _META, _ASK, _INGEST, _REQUESTS,
                                       _MODEL)]
                + ["+get", "+set", "+fcall", "+fcall_ro", "+blpop", "+del", "+hmget",
                   "+hget", "+hlen", "+hvals", "+hgetall", "+zrange", "+zcard", "+zmscore",
                   "+xrange", "+xinfo|groups", "+expire", *_CONNECT]
                + [f"(~{_REQUESTS} +xadd)"]
                + [_log_selector("+xadd", "+xlen", "+xinfo|groups")]
                # Redis 8 declares every vector-set key read-write, so a read-only key
                # pattern cannot allow VSIM: a selector allows VSIM, and only VSIM, on them
                + ([f"(~{_VECTORS} +vsim)"] if vector_sets else []))
    if role == "reader":
        return reader_rules(vector_sets)
    if role == "sync":
        return ([f"~{_LOG}", "+xreadgroup", "+xack", "+xautoclaim", "+xgroup|create",
                 "+xinfo|groups", "+xlen", *_CONNECT])
    raise ShardqaError(f"unknown role {role!r}; one of {', '.join(ROLES)}")


def _log_selector(*commands: str) -> str:
    """An ACL selector: these commands on the question log stream (the user's own key
    patterns do not include the log, so of the log it may do exactly these)."""
    return f"(~{_LOG} {' '.join(commands)})"


def reader_rules(vector_sets: bool) -> list[str]:
    """Read-only: every key pattern is %R~ and every command reads.

    ``FCALL`` is not granted: Redis checks its keys as read-write (it cannot know what a
    function does), so ``FCALL ask`` needs write access to the key; ``FCALL_RO`` runs only
    functions flagged no-writes and checks keys as read-only.
    """
    readable = [_ANSWERS, keys.ask_key(_ANY), *_INDEX, _PASSAGES, _META]
    # the functions' own reads are checked against the user too (rank: ZRANGE, ZCARD,
    # ZMSCORE, HMGET)
    commands = ["+get", "+exists", "+ttl", "+hget", "+hmget", "+zrange", "+zcard",
                "+zmscore", "+fcall_ro", *(["+vsim"] if vector_sets else [])]
    # Redis 8 declares VSIM's key as read-write (a module's legacy key range), so %R~ would
    # refuse it; every command granted here only reads, so ~ on the vector sets is safe
    return [f"%R~{p}" for p in readable] + [f"~{_VECTORS}"] + commands + _CONNECT


def complete(passwords: dict[str, str]) -> dict[str, str]:
    """``passwords`` plus a fresh one for every role it lacks (a cluster made before the
    role existed gains it at its next start)."""
    return {**generate(), **passwords}


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


def aclfile(passwords: dict[str, str], *, vector_sets: bool = False) -> str:
    """The aclfile every node loads: our users with hashed passwords; ``default`` off.

    ``default`` is off (no connection can use it, every client must AUTH) but keeps all
    permissions: Redis 7.0 replays MULTI/EXEC from the AOF at start as ``default`` and
    checks its permissions at EXEC, so a ``default`` without them silently drops every
    transaction in the AOF (the whole index) on restart.
    """
    unusable = hashlib.sha256(secrets.token_bytes(32)).hexdigest()
    lines = [f"user default off resetpass #{unusable} ~* &* +@all"]
    for role in (r for r in ROLES if r in passwords):  # a folder made before `sync` existed
        digest = hashlib.sha256(passwords[role].encode()).hexdigest()
        lines.append(" ".join(["user", role, "on", f"#{digest}", "resetkeys", "resetchannels",
                               "-@all", *rules(role, vector_sets=vector_sets)]))
    return "\n".join(lines) + "\n"
