"""Rank latency as the corpus grows (10k, 50k, 100k passages), on its own index-only cluster.

BM25 needs no reader, so this testbed's workers run without a model: they only index. The
corpus grows in stages (dev paragraphs, then distinct copies of the Wikipedia summaries);
after each stage the same dev questions are ranked (k=5) and timed.

Two ways of ranking are timed on the same index: exact (every posting of every query term
is read) and capped (at most ``cap`` postings per term and partition, highest term frequency
first, every passage found still scored exactly), with the capped top k's overlap with the
exact one. They take turns going first, question by question, so neither always meets the
caches the other warmed.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.corpus import synthetic_stages
from bench.testbed import Testbed
from cluster import partitions
from cluster.partitions import PartitionMap
from gears import ranking
from gears.asker import normalize
from models.evaluation import percentiles


def measure_rank(client, pmap: PartitionMap, questions: list[str], k: int, cap: int) -> dict:
    caps = {"exact": 0, "capped": cap}
    times: dict[str, list[float]] = {"exact": [], "capped": []}
    overlap = []
    for i, q in enumerate(questions):
        q = normalize(q)
        found = {}
        for way in (("exact", "capped") if i % 2 == 0 else ("capped", "exact")):
            t0 = time.perf_counter()
            found[way] = [r.pid for r in ranking.rank(client, pmap, q, k, cap=caps[way])]
            times[way].append((time.perf_counter() - t0) * 1000)
        want = set(found["exact"])
        if want:
            overlap.append(len(want & set(found["capped"])) / len(want))
    return {"exact": percentiles(times["exact"]), "capped": percentiles(times["capped"]),
            "order": "interleaved",
            "capped_overlap_at_k": round(sum(overlap) / max(1, len(overlap)), 4)}


def rank_at_scale(root: Path, *, masters: int, targets: list[int], base, seeds,
                  questions: list[str], k: int = 5, cap: int = ranking.POSTINGS_CAP,
                  say=print) -> list[dict]:
    rows = []
    with Testbed(root, masters=masters, threads=1, api=False) as bed:
        bed.start(artifact=None)
        client = bed.client
        pmap = partitions.load(client)
        for target, stage, total in synthetic_stages(base, seeds, targets):
            ingested = bed.timed_ingest(stage)
            # warm every node and the functions once before timing
            measure_rank(client, pmap, questions[:5], k, cap)
            row = {"target": target, "passages": total, "stage_passages": ingested["passages"],
                   "ingest_passages_per_s": ingested["write_passages_per_s"],
                   "indexed_passages_per_s": ingested["indexed_passages_per_s"],
                   "redis_bytes_per_passage_index_only": ingested["redis_bytes_per_passage"],
                   "k": k, "cap": cap, **measure_rank(client, pmap, questions, k, cap)}
            rows.append(row)
            say(f"  {total:,} passages: rank p50 {row['exact']['p50']:.2f} ms "
                f"(capped {row['capped']['p50']:.2f} ms, overlap "
                f"{row['capped_overlap_at_k']:.2f}); indexed {row['indexed_passages_per_s']:,}"
                " passages/s")
    return rows
