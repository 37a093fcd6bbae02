"""Ingest write throughput and Redis memory per passage, on a throwaway local cluster.

Measures the loader side only (file -> passages in Redis + ingest stream entries; no worker):
  * SQuAD train+dev (the repository's data/squad/), and the 10,033 ovos-wiki summaries;
  * re-ingest of the same input (digests only, nothing written);
  * a baseline in the same run: the same ovos-wiki sample written one command per round trip
    (no batching, no pipelining), to show what batching per partition buys;
  * Redis memory (sum of used_memory over the masters) before/after, per passage.

Run: ``python bench/ingest_write.py [--masters 3] [--json out.json]``. Starts its own
cluster on free ports under a temporary folder and stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from cluster import keys, partitions
from cluster.cli import bring_up
from cluster.connection import Target, connect
from cluster.local import LocalCluster, port_in_use
from loaders.documents import Document, read_documents, read_ovos_wiki
from loaders.passages import split_passages
from loaders.writer import digest, ingest
from shardqa import datasets

SQUAD = datasets.DATA / "squad"


def free_port_base(count: int) -> int:
    """A base of ``count`` free ports whose cluster bus ports (+10000) are free too, drawn so
    that the bus ports stay below Linux's ephemeral range (32768+): an outgoing connection
    took a bus port from 20000-50000 between the check and the node's start."""
    rng = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(200):
        base = rng.randrange(10000, 22700 - count)
        if not any(port_in_use(p) or port_in_use(p + 10000) for p in range(base, base + count)):
            return base
    raise RuntimeError("no free ports")


def used_memory(client) -> int:
    return sum(client.get_redis_connection(n).info("memory")["used_memory"]
               for n in client.get_primaries())


def flush(client) -> None:
    pmap = partitions.load(client)
    for node in client.get_primaries():
        client.get_redis_connection(node).flushall()
    client.set(keys.partition_map(), pmap.to_json())


def run_case(client, name: str, docs: list[Document]) -> dict:
    flush(client)
    before = used_memory(client)
    report = ingest(client, docs, progress=False)
    after = used_memory(client)
    again = ingest(client, docs, progress=False)
    assert again.written == 0 and again.unchanged == report.written
    return {
        "case": name, "documents": report.documents, "passages": report.written,
        "seconds": round(report.elapsed, 3),
        "passages_per_s": round(report.written / report.elapsed),
        "reingest_passages_per_s": round(again.unchanged / again.elapsed),
        "text_bytes": report.bytes,
        "redis_bytes_per_passage": round((after - before) / report.written),
        "text_bytes_per_passage": round(report.bytes / report.written),
    }


def naive_baseline(client, docs: list[Document]) -> dict:
    """The same writes, one command per round trip through the cluster client."""
    flush(client)
    pmap = partitions.load(client)
    started = time.perf_counter()
    written = 0
    for doc in docs:
        part = pmap.for_doc(doc.doc_id)
        passages = split_passages(doc)
        dkey = partitions.doc_key(doc.doc_id)
        client.hmget(keys.doc(part.tag, dkey), ["digest", "passages"])
        for p in passages:
            client.hset(keys.passage(part.tag, p.pid), mapping={
                "doc_id": doc.doc_id, "title": p.title, "text": p.text, "pos": p.position,
                "source": doc.source})
            client.xadd(keys.ingest_stream(part.tag), {"op": "put", "pid": p.pid})
        client.hset(keys.doc(part.tag, dkey), mapping={
            "doc_id": doc.doc_id, "digest": digest(doc, passages),
            "passages": len(passages), "source": doc.source})
        written += len(passages)
    elapsed = time.perf_counter() - started
    return {"case": f"baseline: ovos-wiki first {len(docs)}, one command per round trip",
            "documents": len(docs), "passages": written, "seconds": round(elapsed, 3),
            "passages_per_s": round(written / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--baseline-docs", type=int, default=2000)
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="shardqa-bench-") as tmp:
        local = LocalCluster(Path(tmp) / "cluster")
        bring_up(local, masters=args.masters, port_base=free_port_base(args.masters))
        client = connect(Target(directory=str(local.dir)))
        try:
            squad = [d for d in read_documents([str(SQUAD / "train.json"),
                                                str(SQUAD / "dev.json")])
                     if isinstance(d, Document)]
            wiki = [d for d in read_ovos_wiki() if isinstance(d, Document)]
            rows = [run_case(client, "SQuAD train+dev", squad),
                    run_case(client, "ovos-wiki summaries", wiki)]
            baseline = naive_baseline(client, wiki[: args.baseline_docs])
            batched = run_case(client, f"ovos-wiki first {args.baseline_docs}, batched",
                               wiki[: args.baseline_docs])
            rows += [batched, baseline]
        finally:
            client.close()
            local.down(purge=True)

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"ingest write benchmark ({args.masters} masters, {machine})")
    print("| case | docs | passages | s | passages/s | re-ingest passages/s | "
          "Redis B/passage | text B/passage |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['documents']:,} | {r['passages']:,} | {r['seconds']} | "
              f"{r['passages_per_s']:,} | {r.get('reingest_passages_per_s', '-')} | "
              f"{r.get('redis_bytes_per_passage', '-')} | {r.get('text_bytes_per_passage', '-')} |")
    ratio = batched["passages_per_s"] / baseline["passages_per_s"]
    print(f"batched per partition vs one command per round trip: {ratio:.1f}x")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": machine, "rows": rows,
                                                   "batched_vs_naive": ratio}, indent=2))


if __name__ == "__main__":
    main()
