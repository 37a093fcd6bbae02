"""Health of the pipeline: partitions, pending work, workers' heartbeats, memory.

Used by ``shardqa status`` and by the API's /health.
"""

from __future__ import annotations

import json
import time

from cluster import keys, partitions

#: a worker whose last heartbeat is older than this is counted as down
HEARTBEAT_STALE_S = 5.0


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
    for wid, raw in sorted(client.hgetall(keys.workers()).items()):
        beat = json.loads(raw)
        beat["id"] = wid.decode()
        beat["age_s"] = now - float(beat.get("time", 0))
        workers.append(beat)
    for beat in workers:  # lag: entries waiting in the partitions the worker serves
        mine = [r for r in rows if r["partition"] in set(beat.get("partitions", []))]
        beat["lag"] = sum(r["ingest_pending"] + r["requests_pending"] for r in mine)
    memory = {}
    for node in client.get_primaries():
        info = client.get_redis_connection(node).info("memory")
        memory[node.name] = info.get("used_memory_human")
    return {"generation": int(client.get(keys.generation()) or 0), "partitions": rows,
            "workers": workers, "memory": memory}


def served_partitions(client, now: float | None = None) -> set[int]:
    """Partitions named by a worker whose heartbeat is fresh: someone is reading them."""
    now = time.time() if now is None else now
    served: set[int] = set()
    for raw in client.hvals(keys.workers()):
        try:
            beat = json.loads(raw)
            if now - float(beat["time"]) <= HEARTBEAT_STALE_S:
                served.update(int(i) for i in beat.get("partitions", []))
        except (ValueError, KeyError, TypeError):
            continue
    return served


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
        if w["age_s"] <= HEARTBEAT_STALE_S:
            for index in w.get("partitions", []):
                live[index] = w
    issues = []
    orphans = [p["partition"] for p in report["partitions"] if p["partition"] not in live]
    if orphans:
        issues.append(f"no live worker for partition(s) {orphans}")
    no_model = sorted({w["id"] for w in live.values() if not w.get("model")})
    if no_model:
        issues.append(f"worker(s) without a reader model: {no_model}")
    return issues
