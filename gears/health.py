"""Health of the pipeline: partitions, pending work, workers' heartbeats, memory.

Used by ``shardqa status`` and by the API's /health.
"""

from __future__ import annotations

import json
import time

from cluster import capabilities, heartbeat, keys, partitions, routing


def status(client) -> dict:
    """The numbers behind ``shardqa status`` and the API's /health."""
    pmap = partitions.load(client)
    owners = partitions.owners(client, pmap)
    pipe = client.pipeline(transaction=False)
    for p in pmap:
        pipe.hget(keys.index_stats(p.tag), "n")
        pipe.hlen(keys.index_df(p.tag))
        pipe.hvals(keys.index_windows(p.tag))
    values = pipe.execute()
    rows = []
    for i, p in enumerate(pmap):
        rows.append({
            "partition": p.index, "tag": p.tag, "master": owners.get(p.index, "?"),
            "passages": int(values[3 * i] or 0), "terms": int(values[3 * i + 1] or 0),
            "windows": sum(int(v) for v in values[3 * i + 2]),
            "ingest_pending": _pending(client, keys.ingest_stream(p.tag)),
            "requests_pending": _pending(client, keys.request_stream(p.tag)),
        })
    now = time.time()
    workers = []
    for wid, beat in sorted(heartbeat.all_workers(client).items()):
        workers.append({**beat.as_dict(), "id": wid, "age_s": beat.age(now),
                        "live": beat.fresh(now)})
    for beat in workers:  # lag: entries waiting in the partitions the worker serves
        mine = [r for r in rows if r["partition"] in set(beat.get("partitions", []))]
        beat["lag"] = sum(r["ingest_pending"] + r["requests_pending"] for r in mine)
    memory = {}
    for node in client.get_primaries():
        info = client.get_redis_connection(node).info("memory")
        memory[node.name] = info.get("used_memory_human")
    vector_sets = capabilities.vector_sets(client)
    pointer = encoder_pointer(client, pmap)
    for row, found in zip(rows, vectors(client, pmap, vector_sets), strict=True):
        row.update(found)
    return {"generation": int(client.get(keys.generation()) or 0), "partitions": rows,
            "workers": workers, "memory": memory,
            "retrieval": retrieval(rows, vector_sets, pointer),
            "reembed": reembed_progress(rows, pointer)}


def encoder_pointer(client, pmap: partitions.PartitionMap) -> dict | None:
    """The current passage encoder's pointer {name, version, variant, sha256}, or None."""
    pipe = client.pipeline(transaction=False)
    for p in pmap:
        pipe.get(keys.model_current(p.tag, "encoder"))
    for raw in pipe.execute(raise_on_error=False):
        try:
            pointer = json.loads(raw) if isinstance(raw, bytes | str) else None
        except ValueError:
            pointer = None
        if isinstance(pointer, dict) and pointer.get("version") and pointer.get("name"):
            return pointer
    return None


def vectors(client, pmap: partitions.PartitionMap, vector_sets: bool) -> list[dict]:
    """Per partition: its vectors (VCARD), the encoder that made them, and the re-embed
    under way ({"encoder", "done"}: vectors in the set being built) or None."""
    def build(pipe, p) -> None:
        pipe.hmget(keys.vector_meta(p.tag), [keys.VECTOR_ENCODER, keys.VECTOR_NEXT])
        if vector_sets:
            pipe.execute_command("VCARD", keys.vectors(p.tag))
            pipe.execute_command("VCARD", keys.vectors_next(p.tag))

    replies = routing.per_master(client, pmap.partitions, build, many=True)
    out = []
    for p in pmap:
        meta, *counts = replies[p.index]
        live, building = meta if isinstance(meta, list) else (None, None)
        live_n, next_n = (_count(c) for c in counts) if counts else (0, 0)
        out.append({"vectors": live_n, "encoder": _text(live),
                    "reembed": {"encoder": _text(building), "done": next_n}
                    if building else None})
    return out


def retrieval(rows: list[dict], vector_sets: bool, pointer: dict | None) -> dict:
    """How questions are ranked: "hybrid" (BM25 and dense fused) where every master has
    vector sets and every partition has vectors, else "bm25" (gears/retrieval.py)."""
    encoder = (" ".join(str(pointer.get(f, "?")) for f in ("name", "version", "variant"))
               if pointer else None)
    embedded = bool(rows) and all(r.get("encoder") for r in rows)
    return {"mode": "hybrid" if vector_sets and encoder and embedded else "bm25",
            "vector_sets": vector_sets, "encoder": encoder}


def reembed_progress(rows: list[dict], pointer: dict | None) -> dict:
    """How far the vectors are from being all the current encoder's: {"encoder": its id,
    "partitions": those whose vectors are not (yet), "done": passages with a vector of it
    (those of the other partitions, and the new set of each one re-embedding), "total":
    passages}."""
    from models.identity import model_id

    if pointer is None:
        return {"encoder": None, "partitions": [], "done": 0, "total": 0}
    current = model_id(pointer)
    done, behind = 0, []
    for r in rows:
        building = r.get("reembed")
        if r.get("encoder") == current and building is None:
            done += r["passages"]
            continue
        behind.append(r["partition"])
        if building and building["encoder"] == current:
            done += min(r["passages"], building["done"])
    return {"encoder": current, "partitions": behind, "done": done,
            "total": sum(r["passages"] for r in rows)}


def _count(reply) -> int:
    """VCARD's reply; an error (no vector sets, or not a vector set) counts none."""
    return int(reply) if isinstance(reply, int) else 0


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def served_partitions(client, now: float | None = None) -> set[int]:
    """Partitions named by a worker whose heartbeat is fresh: someone is reading them."""
    return {i for beat in heartbeat.live_workers(client, now).values() for i in beat.partitions}


def _pending(client, stream: str) -> int:
    """Entries not yet acknowledged: undelivered (lag) plus delivered but pending."""
    try:
        groups = client.xinfo_groups(stream)
    except Exception:  # noqa: BLE001 - no stream yet means nothing pending
        return 0
    for g in groups:
        name = g.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == keys.WORKER_GROUP:
            return int(g.get("pending") or 0) + int(g.get("lag") or 0)
    return 0


def problems(report: dict) -> list[str]:
    """What makes the pipeline unable to answer: partitions without a live worker."""
    live = {}
    for w in report["workers"]:
        if w["live"]:
            for index in w.get("partitions", []):
                live[index] = w
    issues = []
    orphans = [p["partition"] for p in report["partitions"] if p["partition"] not in live]
    if orphans:
        issues.append(f"no live worker for partition(s) {orphans}")
    no_model = {w["id"]: w.get("no_reader") for w in live.values() if not w.get("model")}
    if no_model:
        why = "; ".join(f"{wid}: {reason or 'no reader model'}"
                        for wid, reason in sorted(no_model.items()))
        issues.append(f"worker(s) without a verified reader model: {why}")
    return issues
