"""The model store: the models (the reader, the passage encoder) kept in Redis on every
master, chunked, with their sha256.

Each master holds its own copy under the hash tag of the lowest-index partition it owns, so
the worker beside a master loads from its own master and a lost master costs only its copy.
A copy is a meta hash (with the tokenizer JSON) and string chunks of at most 64 MB (Redis
strings stop at 512 MB). ``model_current`` is flipped with one SET only after every chunk
has been written and read back, so a reader never sees a half-written model. Loading checks
the sha256 before ``torch.jit.load`` ever sees the bytes (no pickle anywhere).

Each kind of model (``reader``, ``encoder``: the artifact metadata's ``kind``) has its own
current pointer and its own versions; pushing, pruning and syncing one never touches the
other.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch

from cluster import keys, partitions, routing
from cluster.errors import ShardqaError
from models.encoder import Encoder
from models.export import TOKENIZER, ExportError, read_metadata, reading_settings, sha256_file
from models.identity import parse_model_id
from models.reader import Reader
from models.tokenization import load_tokenizer

log = logging.getLogger("shardqa.models")

MAX_CHUNK = 64 << 20
#: How many versions a master keeps: the current one and the one before it (a worker may
#: still be loading it while the pointer flips).
KEEP_VERSIONS = 2
_INT_FIELDS = ("size", "chunks", "chunk_size", "max_seq_len", "max_question_tokens", "dim")
KINDS = ("reader", "encoder")
_POINTER_FIELDS = ("name", "version", "variant", "sha256")


class NoModel(ShardqaError):
    """Nothing pushed yet."""


class CorruptModel(ShardqaError):
    """A stored copy fails its sha256 check or misses a chunk; nothing was loaded."""


@dataclass
class LoadedModel:
    meta: dict               # name, version, variant, sha256, size, chunks, max_seq_len, ...
    module: torch.jit.ScriptModule
    tokenizer: tokenizers.Tokenizer

    def reader(self, **kwargs) -> Reader:
        """A Reader with this model's max_seq_len / max_question_tokens (kwargs override)."""
        kwargs.setdefault("max_seq_len", int(self.meta["max_seq_len"]))
        kwargs.setdefault("max_question_tokens", int(self.meta["max_question_tokens"]))
        for key, value in reading_settings(self.meta).items():
            kwargs.setdefault(key, value)
        return Reader(self.module, self.tokenizer, **kwargs)

    def encoder(self, **kwargs) -> Encoder:
        """An Encoder with this model's dim and max_seq_len (kwargs override)."""
        kwargs.setdefault("max_seq_len", int(self.meta["max_seq_len"]))
        kwargs.setdefault("dim", int(self.meta["dim"]))
        return Encoder(self.module, self.tokenizer, **kwargs)


def _version(sha: str, reading: dict[str, float]) -> str:
    """The file's sha256 prefix; other reading settings for the same file are another
    version (so a pushed threshold change reaches the workers)."""
    if not reading:
        return sha[:12]
    digest = hashlib.sha256(json.dumps(reading, sort_keys=True).encode()).hexdigest()
    return f"{sha[:12]}-{digest[:6]}"


# --- where each master's copy lives ---------------------------------------------------------

_pmaps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _partition_map(client) -> partitions.PartitionMap:
    pmap = _pmaps.get(client)
    if pmap is None:
        try:
            pmap = partitions.load(client)
        except partitions.NoPartitionMap as exc:
            raise ShardqaError(str(exc)) from exc
        _pmaps[client] = pmap
    return pmap


def master_tags(client) -> dict[str, str]:
    """Master "host:port" -> the tag its copy lives under (its lowest-index partition).
    Masters that own no partition serve no worker and hold no copy."""
    pmap = _partition_map(client)
    owner = partitions.owners(client, pmap)
    tags: dict[str, str] = {}
    for index in sorted(owner):
        tags.setdefault(owner[index], pmap[index].tag)
    return tags


def tag_for(client, node: str) -> str | None:
    """The tag of ``node``'s copy, from the client's slot cache (no round trip when warm)."""
    for p in _partition_map(client):
        if routing.owner_name(client, p.slot) == node:
            return p.tag
    return None


def _node_conn(client, node: str):
    try:
        return routing.on_node(client, node)
    except KeyError:
        raise ShardqaError(f"{node} is not a node of this cluster") from None


# --- reading ----------------------------------------------------------------------------------

def _decode(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _kind(meta: dict) -> str:
    return meta.get("kind") or "reader"  # copies pushed before encoders have no kind


def _pointer(client, tag: str, kind: str = "reader") -> dict | None:
    raw = client.get(keys.model_current(tag, kind))
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if all(k in data for k in _POINTER_FIELDS) else None


def _meta(client, tag: str, name: str, version: str) -> dict | None:
    raw = client.hgetall(keys.model_meta(tag, name, version))
    if not raw:
        return None
    meta = {_decode(k): _decode(v) for k, v in raw.items()}
    for field in _INT_FIELDS:
        if field in meta:
            meta[field] = int(meta[field])
    return meta


def current_meta(client, node: str, kind: str = "reader") -> dict | None:
    """The current model pointer {name, version, variant, sha256} of ``node``'s copy (one GET);
    None if that master holds no model of that kind."""
    tag = tag_for(client, node)
    return _pointer(client, tag, kind) if tag is not None else None


def _chunks(client, tag: str, name: str, version: str, count: int) -> list[bytes | None]:
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.get(keys.model_chunk(tag, name, version, i))
    return pipe.execute()


def read_blob(client, node: str, *, fallback: bool = True, kind: str = "reader"
              ) -> tuple[dict, bytes]:
    """(meta, model bytes) of the current model of ``kind`` on ``node``, sha256-verified.

    Falls back to another master's copy (with a warning) only if ``node`` holds none.
    """
    tag = tag_for(client, node)
    pointer = _pointer(client, tag, kind) if tag is not None else None
    where = node
    if pointer is None and fallback:
        for other, other_tag in master_tags(client).items():
            pointer = _pointer(client, other_tag, kind)
            if pointer is not None:
                log.warning("master %s holds no %s model; loading %s's copy "
                            "(run 'shardqa model sync')", node, kind, other)
                tag, where = other_tag, other
                break
    if pointer is None:
        raise NoModel(f"no {kind} model in the cluster: run 'shardqa model push ARTIFACT'")
    return _verified(client, tag, pointer, where)


def _verified(client, tag: str, pointer: dict, where: str) -> tuple[dict, bytes]:
    """(meta, bytes) of the version ``pointer`` names under ``tag``, sha256-checked."""
    meta = _meta(client, tag, pointer["name"], pointer["version"])
    label = f"model {pointer['name']} {pointer['version']} on {where}"
    if meta is None:
        raise CorruptModel(f"{label}: its meta hash is missing; run 'shardqa model sync'")
    if meta.get("sha256") != pointer["sha256"]:
        raise CorruptModel(f"{label}: meta and pointer disagree on the sha256")
    parts = _chunks(client, tag, meta["name"], meta["version"], meta["chunks"])
    missing = [i for i, part in enumerate(parts) if part is None]
    if missing:
        raise CorruptModel(f"{label}: chunk {missing[0]} of {meta['chunks']} is missing; "
                           "run 'shardqa model sync' or push it again")
    blob = b"".join(parts)
    digest = hashlib.sha256(blob).hexdigest()
    if len(blob) != meta["size"] or digest != meta["sha256"]:
        raise CorruptModel(f"{label} fails its sha256 check ({len(blob)} bytes, sha256 "
                           f"{digest[:12]}, expected {meta['size']} bytes, "
                           f"{meta['sha256'][:12]}); push it again or run 'shardqa model sync'")
    meta["master"] = where
    return meta, blob


_cache: OrderedDict[tuple, LoadedModel] = OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def load(client, node: str, *, cache: bool = True, kind: str = "reader") -> LoadedModel:
    """The current model of ``kind`` of ``node``'s copy, verified (sha256) and cached per
    version."""
    tag = tag_for(client, node)
    pointer = _pointer(client, tag, kind) if tag is not None else None
    key = tuple(pointer[k] for k in _POINTER_FIELDS) if pointer else None
    if cache and key is not None:
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
    return _loaded(*read_blob(client, node, kind=kind), cache=cache)


def load_id(client, node: str, wanted: str) -> LoadedModel:
    """The stored model ``wanted`` (a models.identity.model_id) of ``node``'s copy, current
    or the one kept before it (KEEP_VERSIONS), verified and cached; NoModel if it is gone."""
    name, version, variant = parse_model_id(wanted)
    tag = tag_for(client, node)
    meta = _meta(client, tag, name, version) if tag is not None and version else None
    if meta is None or meta.get("variant", "") != variant:
        raise NoModel(f"model {wanted} is not stored on {node} (each master keeps the "
                      f"current version and the one before it)")
    key = tuple(meta[k] for k in _POINTER_FIELDS)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    pointer = {k: meta[k] for k in _POINTER_FIELDS}
    meta, blob = _verified(client, tag, pointer, node)
    return _loaded(meta, blob, cache=True)


def _loaded(meta: dict, blob: bytes, *, cache: bool) -> LoadedModel:
    """TorchScript and tokenizer from verified bytes; remembered per version if ``cache``."""
    module = torch.jit.load(io.BytesIO(blob), map_location="cpu")
    module.eval()
    tokenizer = load_tokenizer(meta.pop("tokenizer"))
    loaded = LoadedModel(meta=meta, module=module, tokenizer=tokenizer)
    if cache:
        with _cache_lock:
            _cache[tuple(meta[k] for k in _POINTER_FIELDS)] = loaded
            while len(_cache) > KEEP_VERSIONS * len(KINDS):
                _cache.popitem(last=False)
    return loaded


# --- writing ----------------------------------------------------------------------------------

def _copy_complete(client, tag: str, meta: dict) -> bool:
    """The copy under ``tag`` is current and intact: pointer on ``meta``, meta stored, and
    the chunks' sha256 is the artifact's (a same-length corruption is not complete)."""
    pointer = _pointer(client, tag, _kind(meta))
    if pointer is None or any(pointer[k] != meta[k] for k in _POINTER_FIELDS):
        return False
    stored = _meta(client, tag, meta["name"], meta["version"])
    if stored is None or stored.get("sha256") != meta["sha256"]:
        return False
    return _stored_sha256(client, tag, stored) == meta["sha256"]


def _stored_sha256(client, tag: str, meta: dict) -> str | None:
    """sha256 of the chunks stored under ``tag`` for ``meta``, read one chunk at a time
    (None if one is missing)."""
    digest = hashlib.sha256()
    for i in range(int(meta["chunks"])):
        part = client.get(keys.model_chunk(tag, meta["name"], meta["version"], i))
        if part is None:
            return None
        digest.update(part)
    return digest.hexdigest()


def _write_copy(client, tag: str, meta: dict, blob: bytes,
                progress: Callable[[int], None] | None) -> None:
    """Write chunks and meta under ``tag``, then read them back and check the sha256."""
    name, version, size = meta["name"], meta["version"], meta["chunk_size"]
    _delete_version(client, tag, name, version)
    for i in range(meta["chunks"]):
        part = blob[i * size:(i + 1) * size]
        client.set(keys.model_chunk(tag, name, version, i), part)
        if progress:
            progress(len(part))
    client.hset(keys.model_meta(tag, name, version),
                mapping={k: str(v) for k, v in meta.items()})
    back = _chunks(client, tag, name, version, meta["chunks"])
    if any(p is None for p in back) or hashlib.sha256(b"".join(back)).hexdigest() != \
            meta["sha256"]:
        raise CorruptModel(f"model {name} {version} read back wrong under tag {tag}; "
                           "nothing was switched")


def _flip(client, tag: str, meta: dict) -> None:
    client.set(keys.model_current(tag, _kind(meta)),
               json.dumps({k: meta[k] for k in _POINTER_FIELDS}))


def place_copy(client, tag: str, meta: dict, blob: bytes,
               progress: Callable[[int], None] | None = None) -> bool:
    """Write a model copy under ``tag`` and make it current, unless an intact one is there.

    Returns whether it wrote. The pointer flips only after every chunk is in place, so a
    worker never loads a half-written copy.
    """
    if _copy_complete(client, tag, meta):
        return False
    _write_copy(client, tag, meta, blob, progress)
    _flip(client, tag, meta)
    return True


def _versions(client, node: str, tag: str, kind: str | None = None) -> list[dict]:
    """Every model version (of ``kind``, or all) stored under ``tag`` (meta hashes), newest
    push first."""
    prefix = keys.model_prefix(tag)
    found = []
    for raw in _node_conn(client, node).scan_iter(match=f"{prefix}*:meta", count=1000):
        key = _decode(raw)
        name, _, version = key[len(prefix):-len(":meta")].rpartition(":")
        meta = _meta(client, tag, name, version)
        if meta is not None and kind in (None, _kind(meta)):
            meta.pop("tokenizer", None)
            found.append(meta)
    found.sort(key=lambda m: float(m.get("pushed", 0)), reverse=True)
    return found


def _delete_version(client, tag: str, name: str, version: str) -> None:
    meta = _meta(client, tag, name, version)
    count = meta["chunks"] if meta else 0
    doomed = [keys.model_meta(tag, name, version)]
    doomed += [keys.model_chunk(tag, name, version, i) for i in range(count)]
    # also chunks left over by an interrupted write of more chunks
    i = count
    while client.exists(keys.model_chunk(tag, name, version, i)):
        doomed.append(keys.model_chunk(tag, name, version, i))
        i += 1
    for key in doomed:
        client.delete(key)


def _prune(client, node: str, tag: str, kind: str = "reader") -> list[str]:
    """Keep the current version of ``kind`` and the one pushed before it; delete older ones."""
    pointer = _pointer(client, tag, kind)
    versions = _versions(client, node, tag, kind)
    keep = []
    if pointer is not None:
        keep.append((pointer["name"], pointer["version"]))
    for meta in versions:
        if len(keep) >= KEEP_VERSIONS:
            break
        if (meta["name"], meta["version"]) not in keep:
            keep.append((meta["name"], meta["version"]))
    dropped = []
    for meta in versions:
        if (meta["name"], meta["version"]) not in keep:
            _delete_version(client, tag, meta["name"], meta["version"])
            dropped.append(f"{meta['name']}:{meta['version']}")
    return dropped


def _check_chunk_size(chunk_size: int) -> int:
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ShardqaError(f"chunk size must be between 1 byte and 64 MB, got {chunk_size}")
    return int(chunk_size)


def push(client, artifact: Path, *, variant: str = "fp32", chunk_size: int = 64 << 20,
         progress: Callable[[int], None] | None = None) -> dict:
    """Write the artifact's ``variant`` to every master, verify, then flip each master's
    current pointer. Re-pushing the same file is a no-op. Returns the meta (without the
    tokenizer) plus ``written``: the masters that got a new copy."""
    chunk_size = _check_chunk_size(chunk_size)
    artifact = Path(artifact)
    info = read_metadata(artifact)
    variants = info.get("variants", {})
    if variant not in variants:
        hint = f" (export it with --{variant})" if variant in ("int8", "bf16") else ""
        raise ShardqaError(f"{artifact} has no {variant} variant{hint}; it has: "
                           f"{', '.join(sorted(variants)) or 'none'}")
    path = artifact / variants[variant]["file"]
    if not path.is_file():
        raise ExportError(f"{path} is missing from the artifact")
    sha = sha256_file(path)
    if sha != variants[variant]["sha256"]:
        raise CorruptModel(f"{path} does not match the sha256 in its metadata: the artifact "
                           "changed after export; export it again")
    blob = path.read_bytes()
    kind = _kind(info)
    if kind not in KINDS:
        raise ShardqaError(f"{artifact} is a {kind!r} artifact; shardqa stores "
                           f"{' and '.join(KINDS)} models")
    reading = reading_settings(info)
    meta = {
        "kind": kind, "name": info["name"], "version": _version(sha, reading),
        "variant": variant, "sha256": sha,
        "size": len(blob), "chunks": max(1, -(-len(blob) // chunk_size)),
        "chunk_size": chunk_size, "max_seq_len": int(info["max_seq_len"]),
        **_kind_fields(info),
        "dtype": variants[variant].get("dtype", ""), "source": info.get("source", ""),
        "created": info.get("created", ""), "pushed": f"{time.time():.6f}",
        "tokenizer": (artifact / TOKENIZER).read_text(encoding="utf-8"),
        **{k: repr(float(v)) for k, v in reading.items()},
    }
    load_tokenizer(meta["tokenizer"])  # refuse an unreadable tokenizer before writing anything
    tags = master_tags(client)
    if not tags:
        raise ShardqaError("no master owns a partition; is the cluster initialized?")
    todo = {node: tag for node, tag in tags.items() if not _copy_complete(client, tag, meta)}
    for tag in todo.values():
        _write_copy(client, tag, meta, blob, progress)
    for node, tag in todo.items():
        _flip(client, tag, meta)
        _prune(client, node, tag, kind)
    result = {k: v for k, v in meta.items() if k != "tokenizer"}
    result["written"] = sorted(todo)
    result["masters"] = sorted(tags)
    return result


def _kind_fields(info: dict) -> dict:
    """What a model of each kind needs beyond its bytes to run (from the artifact metadata)."""
    if _kind(info) == "encoder":
        return {"dim": int(info["dim"]), "pooling": info.get("pooling", "mean"),
                "normalize": str(bool(info.get("normalize", True))).lower()}
    return {"max_question_tokens": int(info["max_question_tokens"])}


def sync(client, progress: Callable[[int], None] | None = None) -> list[str]:
    """Give every master the cluster's current model of each kind (the most recently pushed
    pointer); returns the masters repaired."""
    repaired: set[str] = set()
    found = False
    for kind in KINDS:
        try:
            repaired.update(sync_kind(client, kind, progress))
            found = True
        except NoModel:
            continue
    if not found:
        raise NoModel("no reader model in the cluster: run 'shardqa model push ARTIFACT'")
    return sorted(repaired)


def sync_kind(client, kind: str = "reader", progress: Callable[[int], None] | None = None
              ) -> list[str]:
    """Give every master the cluster's current model of ``kind``; the masters repaired."""
    tags = master_tags(client)
    candidates = []
    for node, tag in tags.items():
        pointer = _pointer(client, tag, kind)
        if pointer is None:
            continue
        meta = _meta(client, tag, pointer["name"], pointer["version"])
        if meta is not None:
            candidates.append((float(meta.get("pushed", 0)), node, meta))
    if not candidates:
        raise NoModel(f"no {kind} model in the cluster: run 'shardqa model push ARTIFACT'")
    candidates.sort(key=lambda c: c[0], reverse=True)
    want = candidates[0][2]
    source_meta = blob = None
    for _pushed, node, meta in candidates:
        if meta["sha256"] != want["sha256"]:
            continue
        try:
            source_meta, blob = read_blob(client, node, fallback=False, kind=kind)
            break
        except CorruptModel as exc:
            log.warning("%s", exc)
    if blob is None:
        raise CorruptModel(f"no intact copy of model {want['name']} {want['version']} is "
                           "left on any master; push it again")
    source_meta.pop("master", None)
    repaired = []
    for node, tag in tags.items():
        if place_copy(client, tag, source_meta, blob, progress):
            _prune(client, node, tag, kind)
            repaired.append(node)
    return sorted(repaired)


def list_models(client) -> list[dict]:
    """One row per stored (name, version, variant): size, chunks, which masters hold it,
    on which it is current, when it was pushed, and on which its chunks fail their sha256
    (``corrupt_on``)."""
    rows: dict[tuple, dict] = {}
    for node, tag in sorted(master_tags(client).items()):
        pointers = {kind: _pointer(client, tag, kind) for kind in KINDS}
        for meta in _versions(client, node, tag):
            key = (meta["name"], meta["version"], meta.get("variant", ""))
            pointer = pointers.get(_kind(meta))
            row = rows.setdefault(key, {
                "kind": _kind(meta), "name": meta["name"], "version": meta["version"],
                "variant": meta.get("variant", ""), "size": meta["size"],
                "chunks": meta["chunks"], "sha256": meta["sha256"],
                "pushed": float(meta.get("pushed", 0)), "masters": [], "current_on": [],
                "corrupt_on": [],
            })
            row["masters"].append(node)
            if _stored_sha256(client, tag, meta) != meta["sha256"]:
                row.setdefault("corrupt_on", []).append(node)
            if pointer and pointer["version"] == meta["version"] and \
                    pointer["name"] == meta["name"]:
                row["current_on"].append(node)
    return sorted(rows.values(), key=lambda r: r["pushed"], reverse=True)
