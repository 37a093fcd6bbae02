"""The scale model (issue 16, item 4): what a passage costs in Redis, how one partition's
rank and VSIM grow with its passages, and what an added master and worker buy, measured
here so the README can extrapolate to 10 M and 100 M passages.

Three measurements, each on its own throwaway deployment (bench/testbed.py):

* **bytes per passage**, split by what holds them: a 2-master stack with the reader (int8)
  and the passage encoder ingests real passages (tokenized, BM25-indexed, embedded as
  shipped: Q8); every key is then sized with ``MEMORY USAGE`` and put in a category by its
  name (cluster/keys.py). A passage hash holds both its text and its reader windows: its
  size is split in proportion to the bytes of its fields.
* **one partition growing**: a 1-master, 1-partition cluster whose worker only indexes,
  grown to each size with the rank-at-scale corpus (bench/corpus.py: rotated copies of the
  Wikipedia summaries). At each size the shipped rank (k=5 and the hybrid's 100 candidates,
  postings cap) and the shipped VSIM (COUNT 100, NOTHREAD) are timed on that one partition:
  client latency and Redis' own time per call (commandstats). Embedding 100,000 passages
  would take most of the phase, so the vector set holds synthetic vectors: real passage
  embeddings (the encoder, as shipped) each copied with Gaussian jitter and normalized, and
  the questions are the real questions' embeddings.
* **per master and worker**: the same corpus and questions at concurrency 16 (k=5, int8,
  BM25) on 1 master + 1 worker of 2 threads and on 2 masters + 2 workers of 1 thread: the
  questions per second and the CPU ms per question of each kind of process
  (bench/cpu_budget.py). On 2 cores both stacks share the same 2 cores: this shows what a
  master and a worker cost per question, not what a second machine would add.

``extrapolate`` turns the three into the scale model, its assumptions named in the JSON.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench import cpu_budget
from bench.corpus import passages as split_all
from bench.corpus import synthetic_stages
from bench.testbed import Testbed
from cluster import keys, partitions
from gears import dense, fusion, ranking
from gears.asker import normalize
from models.encoder import passage_input
from models.evaluation import percentiles


@dataclass
class ScaleSettings:
    quick: bool = False
    memory_documents: int = 2000  # Wikipedia summaries ingested for the byte split
    partition_sizes: tuple[int, ...] = (10_000, 30_000, 100_000)
    timed_questions: int = 100  # rank and VSIM calls timed at each size
    seed_vectors: int = 1000  # real passage embeddings the synthetic vectors copy
    vector_jitter: float = 0.03  # per-dimension Gaussian sigma (unit vectors of 384 dims)
    throughput_documents: int = 1500  # Wikipedia summaries beside the dev paragraphs
    throughput_questions: int = 160  # at concurrency 16, after 32 unmeasured ones
    concurrency: int = 16
    masters: tuple[int, ...] = (1, 2)

    @classmethod
    def for_run(cls, quick: bool, **overrides) -> ScaleSettings:
        s = cls(quick=quick)
        if quick:
            s.memory_documents, s.partition_sizes, s.timed_questions = 300, (1_000, 3_000), 20
            s.seed_vectors, s.throughput_documents, s.throughput_questions = 100, 200, 32
        for name, value in overrides.items():
            if value is not None:
                setattr(s, name, value)
        return s


# --- bytes per passage ------------------------------------------------------------------------

#: what each partition key holds, by the name after its hash tag (cluster/keys.py)
CATEGORIES = (
    ("bm25_index", ("ix:t:", "ix:len", "ix:df", "ix:stats", "ix:doc:")),
    ("windows", ("ix:wins",)),
    ("vectors", ("vs", "ix:vectors")),
    ("passage_text_metadata", ("doc:",)),
    ("streams", ("ingest", "requests", "dead")),
    ("models", ("model:",)),
)
WINDOW_FIELDS = (b"tok_ids", b"tok_offs", b"tok_wins", b"tok_sig")


def category(key: bytes) -> str:
    """The category of a key by its name; "other" outside partitions (metadata, cache)."""
    name = key.decode("utf-8", "replace")
    if "}:" not in name:
        return "other"
    rest = name.split("}:", 1)[1]
    if rest.startswith("psg:"):
        return "passage"  # split later into windows and text
    for cat, prefixes in CATEGORIES:
        if rest.startswith(prefixes):
            return cat
    return "other"


def key_bytes(client, sample: int = 1000) -> dict[str, float]:
    """Category -> MEMORY USAGE summed over every key of every master. Passage hashes are
    split between ``windows`` and ``passage_text_metadata`` by the share of their fields'
    bytes that are windows, from up to ``sample`` hashes per master."""
    out: dict[str, float] = {}
    for node in client.get_primaries():
        conn = client.get_redis_connection(node)
        passages: dict[bytes, int] = {}
        batch: list[bytes] = []
        for key in conn.scan_iter(count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                _size(conn, batch, out, passages)
                batch = []
        _size(conn, batch, out, passages)
        share = window_share(conn, dict(list(passages.items())[:sample]))
        held = sum(passages.values())
        out["windows"] = out.get("windows", 0) + held * share
        out["passage_text_metadata"] = out.get("passage_text_metadata", 0) + held * (1 - share)
    return out


def _size(conn, names: list[bytes], out: dict[str, float], passages: dict[bytes, int]) -> None:
    pipe = conn.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name, samples=0)
    for name, size in zip(names, pipe.execute() if names else [], strict=True):
        cat = category(name)
        if cat == "passage":
            passages[name] = int(size or 0)
        else:
            out[cat] = out.get(cat, 0) + int(size or 0)


def window_share(conn, sizes: dict[bytes, int]) -> float:
    """The share of these passage hashes' bytes that are reader windows (tok_* fields)."""
    if not sizes:
        return 0.0
    pipe = conn.pipeline(transaction=False)
    for name in sizes:
        pipe.hgetall(name)
    windows = total = 0.0
    for size, fields in zip(sizes.values(), pipe.execute(), strict=True):
        every = sum(len(f) + len(v) for f, v in fields.items()) or 1
        win = sum(len(f) + len(v) for f, v in fields.items() if f in WINDOW_FIELDS)
        windows += size * win / every
        total += size
    return windows / max(1.0, total)


def per_passage(sizes: dict[str, float], before: dict[str, float], n: int) -> dict[str, int]:
    """Bytes per passage of each category the ingest of ``n`` passages grew."""
    return {c: round((sizes.get(c, 0) - before.get(c, 0)) / max(1, n)) for c in PER_PASSAGE}


PER_PASSAGE = ("bm25_index", "windows", "passage_text_metadata", "vectors")


def memory_split(root: Path, artifact: Path, encoder: Path, documents, say=print) -> dict:
    """Bytes per passage by category on a stack that tokenizes, indexes and embeds."""
    with Testbed(root, masters=2, threads=1, api=False) as bed:
        bed.start(artifact, "int8", encoder=encoder)
        before = key_bytes(bed.client)
        ingested = bed.timed_ingest(documents)
        n = ingested["passages"]
        sizes = key_bytes(bed.client)
    split = per_passage(sizes, before, n)
    out = {"passages": n, "documents": ingested["documents"], "masters": 2, "partitions": 16,
           "quantization": "Q8", "bytes_per_passage": split,
           "bytes_per_passage_sum": sum(split.values()),
           "not_per_passage_bytes": {c: round(sizes.get(c, 0)) for c in
                                     ("models", "streams", "other")},
           "indexed_passages_per_s": ingested["indexed_passages_per_s"]}
    say(f"  {n:,} passages: {split} bytes each (MEMORY USAGE)")
    return out


# --- one partition growing --------------------------------------------------------------------

def synthetic_vectors(seeds: np.ndarray, count: int, jitter: float, rng) -> np.ndarray:
    """``count`` unit vectors, each a seed embedding plus Gaussian noise: real embeddings'
    clusters, distinct points."""
    picked = seeds[rng.integers(0, len(seeds), size=count)]
    noisy = picked + rng.normal(0.0, jitter, size=picked.shape).astype(np.float32)
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def add_vectors(client, tag: str, vectors: np.ndarray, start: int, batch: int = 500) -> float:
    """VADD (Q8, as gears/embedder.py) ``vectors`` as elements v<start>...; seconds taken."""
    from gears.embedder import QUANTIZATION

    t0 = time.perf_counter()
    name = keys.vectors(tag)
    for lo in range(0, len(vectors), batch):
        pipe = client.pipeline(transaction=False)
        for i, v in enumerate(vectors[lo:lo + batch], start=start + lo):
            pipe.execute_command("VADD", name, "FP32", dense.vector_blob(v), f"v{i}",
                                 QUANTIZATION)
        pipe.execute()
    return time.perf_counter() - t0


def server_us(client, command: str) -> tuple[int, float]:
    """(calls, usec) Redis reports for ``command`` so far, summed over the masters."""
    row = cpu_budget.commandstats(client).get(command, {})
    return int(row.get("calls", 0)), float(row.get("usec", 0))


def timed(client, command: str, call, items) -> dict:
    """Client latency percentiles of ``call(item)``, and the µs Redis spent in ``command``
    per item (rank: its stats and rank functions; VSIM: the search)."""
    calls0, us0 = server_us(client, command)
    ms = []
    for item in items:
        t0 = time.perf_counter()
        call(item)
        ms.append((time.perf_counter() - t0) * 1000)
    calls1, us1 = server_us(client, command)
    return {"client_ms": percentiles(ms), "server_calls_per_item":
            round((calls1 - calls0) / max(1, len(items)), 2),
            "server_us_per_item": round((us1 - us0) / max(1, len(items)), 1)}


def partition_growth(root: Path, sizes: list[int], base, seeds, questions: list[str],
                     question_vectors: np.ndarray, seed_vectors: np.ndarray, jitter: float,
                     say=print) -> list[dict]:
    """Rank and VSIM latency on one partition at each size (module docstring)."""
    rng = np.random.default_rng(0)
    rows = []
    with Testbed(root, masters=1, threads=1, api=False, partition_count=1) as bed:
        bed.start(artifact=None)
        client = bed.client
        pmap = partitions.load(client)
        tag = pmap[0].tag
        normalized = [normalize(q) for q in questions]
        vectors = 0
        for target, stage, total in synthetic_stages(base, seeds, sizes):
            ingested = bed.timed_ingest(stage)
            vadd_s = add_vectors(client, tag, synthetic_vectors(
                seed_vectors, total - vectors, jitter, rng), vectors)
            added, vectors = total - vectors, total
            for q, v in zip(normalized[:10], question_vectors[:10], strict=False):
                ranking.rank(client, pmap, q, 5)  # warm the node, the functions, the set
                ranking.rank(client, pmap, q, fusion.CANDIDATES)
                dense.search(client, pmap, v, fusion.CANDIDATES)
            row = {"target": target, "passages_in_partition": total,
                   "bytes_per_passage": per_passage(key_bytes(client), {}, total),
                   "stage_used_memory_growth_per_passage": ingested["redis_bytes_per_passage"],
                   "indexed_passages_per_s": ingested["indexed_passages_per_s"],
                   "vadd_per_s": round(added / max(vadd_s, 1e-9)),
                   "rank_k5": timed(client, "fcall_ro",
                                    lambda q: ranking.rank(client, pmap, q, 5), normalized),
                   f"rank_k{fusion.CANDIDATES}": timed(
                       client, "fcall_ro",
                       lambda q: ranking.rank(client, pmap, q, fusion.CANDIDATES), normalized),
                   f"vsim_count{fusion.CANDIDATES}": timed(
                       client, "VSIM",
                       lambda v: dense.search(client, pmap, v, fusion.CANDIDATES),
                       list(question_vectors))}
            rows.append(row)
            say(f"  {total:,} passages in one partition: rank k=5 p50 "
                f"{row['rank_k5']['client_ms']['p50']:.2f} ms, k={fusion.CANDIDATES} "
                f"{row[f'rank_k{fusion.CANDIDATES}']['client_ms']['p50']:.2f} ms, VSIM "
                f"{row[f'vsim_count{fusion.CANDIDATES}']['client_ms']['p50']:.2f} ms")
    return rows


# --- per master and worker --------------------------------------------------------------------

def per_master(root: Path, artifact: Path, documents, questions, warm_up, masters: int,
               concurrency: int, say=print) -> dict:
    """Questions per second and CPU ms per question on ``masters`` masters, one worker each,
    the 2 cores' threads divided between the workers (as ``shardqa up`` does)."""
    threads = max(1, 2 // masters)
    with Testbed(root, masters=masters, threads=threads,
                 apis={"api": ["--retrieval", "bm25"]}) as bed:
        bed.start(artifact, "int8")
        bed.timed_ingest(documents)
        m = cpu_budget.measure(bed, questions, warm_up, concurrency=concurrency, k=5,
                               spy=False, say=say)
    return {"masters": masters, "workers": masters, "threads_per_worker": threads,
            "questions": m["questions"], "answered": m["answered"],
            "questions_per_s": m["questions_per_s"], "latency": m["latency"],
            "cpu_ms_per_question": m["cpu_ms_per_question"]["by_kind"],
            "machine": m["machine"]}


# --- the model ---------------------------------------------------------------------------------

#: assumptions of the extrapolation, written into the JSON beside it
ASSUMPTIONS = {
    "master_gb": 16,
    # used_memory kept at <= 60 % of a 16 GB node: allocator fragmentation, a fork's
    # copy-on-write during a replica's full sync or a snapshot, replication and client
    # buffers, the answer cache and streams
    "usable_share": 0.6,
    "replicas_per_master": 1,
    # the p50 goal is 80 ms uncached (issue 7); the reader's read stage takes ~43 ms at k=5
    # (2026-12-01-0814.json, server_stages_p50_ms): ~20 ms of Redis time per master is the
    # retrieval budget left with a margin for queueing
    "retrieval_budget_ms_per_master": 20.0,
    "corpus_sizes": [10_000_000, 100_000_000],
}


def fit_linear(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line."""
    if len(xs) < 2:
        return (ys[0] if ys else 0.0), 0.0
    mx, my = statistics.mean(xs), statistics.mean(ys)
    var = sum((x - mx) ** 2 for x in xs) or 1.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    return my - slope * mx, slope


def passage_bytes(memory: dict, growth: list[dict]) -> dict[str, int]:
    """The bytes a passage costs in a large partition: BM25 index, text and vectors from the
    largest partition measured, windows from the stack that tokenized (the growing one's
    worker only indexes)."""
    large = growth[-1]["bytes_per_passage"] if growth else memory["bytes_per_passage"]
    return {"bm25_index": large["bm25_index"],
            "windows": memory["bytes_per_passage"]["windows"],
            "passage_text_metadata": large["passage_text_metadata"],
            "vectors": large["vectors"]}


def per_core(rows: list[dict]) -> dict:
    """CPU ms per question of each kind of process on the stack with the most masters, and
    the questions per second one core of each kind would carry alone."""
    if not rows:
        return {}
    top = max(rows, key=lambda r: r["masters"])
    cpu = {k: v for k, v in top["cpu_ms_per_question"].items() if k != "bench client"}
    return {"masters": top["masters"], "cpu_ms_per_question": cpu,
            "questions_per_s_per_core": {k: round(1000 / v, 1) for k, v in cpu.items() if v}}


def extrapolate(memory: dict, growth: list[dict], masters_rows: list[dict] | None = None,
                assumptions: dict = ASSUMPTIONS) -> dict:
    """Masters per corpus size for memory and for retrieval time, from the measured rows."""
    a = assumptions
    parts = passage_bytes(memory, growth)
    bpp = sum(parts.values())
    usable = a["master_gb"] * 1e9 * a["usable_share"]
    by_memory = {str(n): {"data_gb": round(n * bpp / 1e9, 1),
                          "masters": math.ceil(n * bpp / usable),
                          "nodes_with_replicas": math.ceil(n * bpp / usable)
                          * (1 + a["replicas_per_master"])}
                 for n in a["corpus_sizes"]}
    sizes = [r["passages_in_partition"] for r in growth]
    rank_key = f"rank_k{fusion.CANDIDATES}"
    vsim_key = f"vsim_count{fusion.CANDIDATES}"
    per_call_ms = [(r[rank_key]["server_us_per_item"] + r[vsim_key]["server_us_per_item"])
                   / 1000 for r in growth]
    intercept, slope = fit_linear(sizes, per_call_ms)
    by_time = {}
    for n in a["corpus_sizes"]:
        rows = {}
        for size, ms in zip(sizes, per_call_ms, strict=True):
            count = math.ceil(n / size)
            masters = math.ceil(count * ms / a["retrieval_budget_ms_per_master"])
            rows[str(size)] = {"partitions": count, "redis_ms_per_question": round(count * ms),
                               "masters_for_budget": masters}
        by_time[str(n)] = rows
    growth_ratio = None
    if len(growth) >= 2:
        first, last = growth[0], growth[-1]
        growth_ratio = {
            "passages": round(last["passages_in_partition"] / first["passages_in_partition"], 1),
            "rank": round(last[rank_key]["server_us_per_item"]
                          / max(1e-9, first[rank_key]["server_us_per_item"]), 2),
            "vsim": round(last[vsim_key]["server_us_per_item"]
                          / max(1e-9, first[vsim_key]["server_us_per_item"]), 2)}
    return {"assumptions": a, "bytes_per_passage": parts, "bytes_per_passage_sum": bpp,
            "masters_for_memory": by_memory,
            "rank_plus_vsim_ms_per_partition_fit": {"intercept_ms": round(intercept, 3),
                                                    "ms_per_100k_passages":
                                                        round(slope * 100_000, 3)},
            "growth_first_to_last": growth_ratio, "masters_for_retrieval_time": by_time,
            "per_core": per_core(masters_rows or [])}


# --- the phase ---------------------------------------------------------------------------------

def run_scale(settings: ScaleSettings, root: Path, *, artifact: Path, encoder: Path,
              dev_documents, distractors, questions: list[str], say=print) -> dict:
    """Every measurement of the scale model and the model, in one dict."""
    from bench.retrieval_fusion import load_encoder

    s = settings
    out: dict = {"settings": {k: list(v) if isinstance(v, tuple) else v
                              for k, v in asdict(s).items()}, "elapsed_s": {}}
    t0 = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal t0
        out["elapsed_s"][part] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()

    say("scale: bytes per passage (tokenized, indexed, embedded)")
    out["memory"] = memory_split(root / "memory", artifact, encoder,
                                 distractors[: s.memory_documents], say)
    lap("memory")
    say("scale: rank and VSIM on one partition as it grows")
    enc = load_encoder(encoder, "int8", threads=2)
    pool = split_all(distractors[: max(s.seed_vectors, s.memory_documents)])
    seed_passages = random.Random(0).sample(pool, min(s.seed_vectors, len(pool)))
    seeds = enc.embed([passage_input(p.title, p.text) for p in seed_passages])
    timed_qs = questions[: s.timed_questions]
    question_vectors = enc.embed(timed_qs)
    out["partition_growth"] = partition_growth(
        root / "growth", list(s.partition_sizes), dev_documents, distractors, timed_qs,
        question_vectors, seeds, s.vector_jitter, say)
    lap("partition_growth")
    say(f"scale: throughput per master and worker (concurrency {s.concurrency}, k=5, int8)")
    docs = dev_documents + distractors[: s.throughput_documents]
    asked = questions[s.timed_questions: s.timed_questions + 32 + s.throughput_questions]
    out["per_master"] = [per_master(root / f"masters-{m}", artifact, docs,
                                    _examples(asked[32:]), _examples(asked[:32]), m,
                                    s.concurrency, say) for m in s.masters]
    lap("per_master")
    out["model"] = extrapolate(out["memory"], out["partition_growth"], out["per_master"])
    return out


def _examples(questions: list[str]):
    """The question objects cpu_budget.ask_all takes (it reads ``.question``)."""
    from types import SimpleNamespace

    return [SimpleNamespace(question=q) for q in questions]
