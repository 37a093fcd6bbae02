"""Rank latency as the corpus grows (10k, 50k, 100k passages), on index-only clusters.

BM25 needs no reader, so these testbeds' workers run without a model: they only index. The
corpus grows in stages (dev paragraphs, the Wikipedia summaries, then synthetic passages);
after each stage the same dev questions are ranked (k=5) and timed. It grows two ways, each
on its own cluster, side by side (``bench.corpus.GROWTHS``): rotated copies of the summaries
(every copy repeats the vocabulary, and the passages that match a question repeat with it)
and a natural vocabulary growth (new rare words keep appearing, Heaps' law fitted to the
summaries). Both start from the same real 10k passages.

Two ways of ranking are timed on each index: exact (``cap`` 0: every posting a term needs)
and capped (at most ``cap`` postings per term and partition, highest term frequency first,
every passage found still scored exactly), with the capped top k's overlap with the exact
one. All four (growth x way) take turns going first, question by question, so none always
meets the caches another warmed and both growths see the same machine load.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from bench import corpus
from bench.testbed import Testbed
from cluster import partitions
from gears import analyzer, ranking
from gears.asker import normalize
from loaders.passages import split_passages
from models.evaluation import percentiles

WAYS = ("exact", "capped")
#: how the README and the report name each growth
GROWTH_NAMES = {"rotated": "rotated copies", "natural": "natural vocabulary"}


def measure_rank(clients: dict, questions: list[str], k: int, cap: int) -> dict[str, dict]:
    """growth -> exact and capped percentiles and the capped top k's overlap with exact;
    ``clients``: growth -> (client, partition map). The (growth, way) pairs rotate which
    goes first from one question to the next."""
    caps = {"exact": 0, "capped": cap}
    turns = [(g, way) for g in clients for way in WAYS]
    times = {turn: [] for turn in turns}
    overlap: dict[str, list[float]] = {g: [] for g in clients}
    for i, q in enumerate(questions):
        q = normalize(q)
        found = {}
        for g, way in turns[i % len(turns):] + turns[:i % len(turns)]:
            client, pmap = clients[g]
            t0 = time.perf_counter()
            found[g, way] = [r.pid for r in ranking.rank(client, pmap, q, k, cap=caps[way])]
            times[g, way].append((time.perf_counter() - t0) * 1000)
        for g in clients:
            want = set(found[g, "exact"])
            if want:
                overlap[g].append(len(want & set(found[g, "capped"])) / len(want))
    return {g: {"exact": percentiles(times[g, "exact"]),
                "capped": percentiles(times[g, "capped"]), "order": "interleaved",
                "capped_overlap_at_k": round(sum(overlap[g]) / max(1, len(overlap[g])), 4)}
            for g in clients}


def rarest_postings(client, pmap, questions: list[str]) -> float:
    """Mean over questions of the global document frequency of their rarest indexed term:
    the postings MaxScore reads first, whatever the other terms."""
    rarest = []
    for q in questions:
        terms = analyzer.query_terms(normalize(q))
        if terms:
            df = [n for n in ranking.global_stats(client, pmap, terms).df.values() if n]
            if df:
                rarest.append(min(df))
    return round(sum(rarest) / max(1, len(rarest)), 1)


def rank_at_scale(root: Path, *, masters: int, targets: list[int], base, seeds,
                  questions: list[str], k: int = 5, cap: int = ranking.POSTINGS_CAP,
                  growths: tuple[str, ...] = tuple(corpus.GROWTHS), port_base: int | None = None,
                  say=print) -> list[dict]:
    """One row per growth and target (``growth``, ``passages``, timings, vocabulary).
    ``port_base``: the growths' clusters listen from port_base + 10, + 20, ... (default:
    free ports)."""
    rows = []
    with contextlib.ExitStack() as stack:
        beds = {g: stack.enter_context(Testbed(
            root / g, masters=masters, threads=1, api=False,
            port_base=port_base and port_base + 10 * (1 + n))) for n, g in enumerate(growths)}
        clients = {}
        for g, bed in beds.items():
            bed.start(artifact=None)
            clients[g] = (bed.client, partitions.load(bed.client))
        stages = {g: corpus.synthetic_stages(base, seeds, targets, g) for g in growths}
        vocabulary: dict[str, set] = {g: set() for g in growths}
        heaps = [round(x, 3) for x in corpus.heaps_fit(corpus.words(seeds))]
        for _ in sorted(targets):
            grown = {}
            for g in growths:
                target, stage, total = next(stages[g])
                grown[g] = (target, total, beds[g].timed_ingest(stage))
                for doc in stage:
                    for p in split_passages(doc):
                        vocabulary[g].update(analyzer.terms(p.text))
            measure_rank(clients, questions[:5], k, cap)  # warm every node and the functions
            timed = measure_rank(clients, questions, k, cap)
            for g in growths:
                target, total, ingested = grown[g]
                row = {"growth": g, "target": target, "passages": total,
                       "stage_passages": ingested["passages"],
                       "ingest_passages_per_s": ingested["write_passages_per_s"],
                       "indexed_passages_per_s": ingested["indexed_passages_per_s"],
                       "redis_bytes_per_passage_index_only": ingested["redis_bytes_per_passage"],
                       "vocabulary": len(vocabulary[g]),
                       "rarest_term_postings": rarest_postings(*clients[g], questions),
                       "k": k, "cap": cap, **timed[g]}
                if g == "natural":  # V = K N**beta of the seeds, which this growth continues
                    row["seed_heaps_k_beta"] = heaps
                rows.append(row)
                say(f"  {g} growth, {total:,} passages ({row['vocabulary']:,} terms): rank p50 "
                    f"{row['exact']['p50']:.2f} ms (capped {row['capped']['p50']:.2f} ms, "
                    f"overlap {row['capped_overlap_at_k']:.2f}); indexed "
                    f"{row['indexed_passages_per_s']:,} passages/s")
    return rows


def by_growth(rows: list[dict]) -> dict[str, list[dict]]:
    """A ``rank_scale`` list split by growth, smallest corpus first (rows of files written
    before there were two growths are rotated copies)."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row.get("growth", "rotated"), []).append(row)
    return {g: sorted(rs, key=lambda r: r["passages"]) for g, rs in out.items()}
