"""Choosing how to fuse BM25 and dense retrieval, on data (issue 13).

Corpus: the demo corpus (the 10,033 ovos-wiki summaries) plus the SQuAD dev paragraphs,
split into passages by the loaders. Questions: SQuAD dev (written while reading the
paragraph) and the natural dev set (written without it). For each question the right
passage is ``passage_id(title, paragraph_index)``; recall@k is how often it is in the top k.

The system's own parts: BM25 is the Lua ``rank`` over a real Redis 8 cluster after a real
ingest (loaders -> workers -> index); dense is ``VSIM`` over the partitions' vector sets
(Q8 HNSW, as the ingest stage writes them) with the MiniLM encoder export (models.encoder),
beside an exact cosine top-k in numpy to see what HNSW + Q8 cost. Corpus embeddings are
computed once and cached as .npy (``--cache``). Fusions of the two candidate lists
(``--depth`` each): RRF with several k and weights, weighted normalized-score fusion with
several weights (gears.fusion).

    python -m bench.retrieval_fusion [--variant int8|fp32] [--max-seq-len N]
        [--cache /tmp/shardqa-fusion]
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from bench import corpus
from cluster.partitions import passage_id
from gears import fusion
from gears.ranking import Ranked
from loaders.passages import Passage, split_passages
from models.encoder import Encoder, passage_input
from models.squad import read_squad

console = Console(highlight=False, stderr=True)
NATURAL = corpus.DEV.parent.parent / "natural" / "wiki-natural-dev.json"
RESULTS = Path(__file__).resolve().parent / "results"
KS = (1, 5, 20)
DEPTH = 100


@dataclass(frozen=True)
class Question:
    text: str
    gold: str  # the passage id that holds the answer


# --- inputs ----------------------------------------------------------------------------------

def corpus_passages(dev: Path = corpus.DEV) -> list[Passage]:
    """The ovos-wiki summaries and the SQuAD dev paragraphs, as the loaders split them."""
    docs = corpus.distractors() + corpus.dev_documents(dev)
    return [p for d in docs for p in split_passages(d)]


def question_sets(dev: Path = corpus.DEV, natural: Path = NATURAL) -> dict[str, list[Question]]:
    sets = {}
    for name, path in (("natural", natural), ("squad-dev", dev)):
        sets[name] = [Question(ex.question, passage_id(ex.title, ex.paragraph_index))
                      for ex in read_squad(path)]
    return sets


def load_encoder(artifact: Path, variant: str, threads: int | None = None,
                 max_seq_len: int | None = None, max_batch: int = 64) -> Encoder:
    """The artifact's encoder, cut at ``max_seq_len`` tokens (None: the artifact's own)."""
    import torch

    from models.export import read_metadata
    from models.tokenization import load_tokenizer

    info = read_metadata(artifact)
    module = torch.jit.load(str(artifact / info["variants"][variant]["file"]),
                            map_location="cpu").eval()
    return Encoder(module, load_tokenizer((artifact / "tokenizer.json").read_text()),
                   dim=int(info["dim"]), max_seq_len=max_seq_len or int(info["max_seq_len"]),
                   max_batch=max_batch,
                   threads=threads)


def embed_corpus(encoder: Encoder, passages: list[Passage], cache: Path, label: str
                 ) -> np.ndarray:
    """Every passage's embedding (title + text), from ``cache`` when it holds this corpus."""
    digest = hashlib.sha1("\n".join(p.pid for p in passages).encode()).hexdigest()[:10]
    path = Path(cache) / f"{label}-{len(passages)}-{digest}.npy"
    if path.is_file():
        return np.load(path)
    from tqdm import tqdm

    texts = [passage_input(p.title, p.text) for p in passages]
    ids = encoder.token_ids(texts)
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    step = 640
    with tqdm(total=len(texts), desc=f"embedding ({label})", file=sys.stderr) as bar:
        for k in range(0, len(order), step):
            rows = order[k:k + step]
            out[rows] = encoder.embed([texts[i] for i in rows])
            bar.update(len(rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def throughput(artifact: Path, passages: list[Passage], questions: list[str], n: int = 300,
               rounds: int = 2, max_seq_len: int | None = None) -> dict:
    """Passages/s of each variant on the same ``n`` passages (variants alternate for
    ``rounds`` rounds and the best round counts: other load on the cores hits both alike),
    int8's cosine to fp32 on them, and the p50 ms of embedding one question."""
    rng = np.random.default_rng(0)
    sample = [passages[i] for i in rng.choice(len(passages), size=n, replace=False)]
    texts = [passage_input(p.title, p.text) for p in sample]
    encoders = {variant: load_encoder(artifact, variant, max_seq_len=max_seq_len)
                for variant in ("fp32", "int8")}
    best: dict[str, float] = {}
    vectors = {}
    for _ in range(rounds):
        for variant, encoder in encoders.items():
            encoder.warm_up()
            t0 = time.perf_counter()
            vectors[variant] = encoder.embed(texts)
            best[variant] = min(best.get(variant, 1e9), time.perf_counter() - t0)
    result = {v: {"passages_per_s": round(n / s, 1), "seconds": round(s, 2),
                  "question_ms_p50": question_ms(encoders[v], questions)}
              for v, s in best.items()}
    tokens = sum(len(ids) for ids in encoders["fp32"].token_ids(texts))
    result["mean_tokens"] = round(tokens / n, 1)
    cosine = (vectors["fp32"] * vectors["int8"]).sum(axis=1)
    result["int8_cosine_to_fp32"] = {"min": float(cosine.min()), "mean": float(cosine.mean())}
    result["passages"], result["rounds"] = n, rounds
    return result


def question_ms(encoder: Encoder, questions: list[str]) -> float:
    """Median ms to embed one question alone (what asking costs)."""
    times = []
    for q in questions:
        t0 = time.perf_counter()
        encoder.embed([q])
        times.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(times)), 2)


# --- retrieval -------------------------------------------------------------------------------

def exact_dense(vectors: np.ndarray, queries: np.ndarray, depth: int,
                pids: list[str]) -> list[list[Ranked]]:
    """Exact cosine top-``depth`` (unit vectors: a dot product)."""
    out = []
    for row in queries @ vectors.T:
        top = np.argpartition(-row, depth)[:depth]
        top = top[np.argsort(-row[top], kind="stable")]
        out.append([Ranked(pids[i], -1, float(row[i])) for i in top])
    return out


def recall(runs: list[list], questions: list[Question], ks=KS) -> dict[str, float]:
    """Percent of questions whose right passage is in the top k, for each k."""
    hits = {k: 0 for k in ks}
    for ranked, q in zip(runs, questions, strict=True):
        pids = [r.pid for r in ranked]
        position = pids.index(q.gold) + 1 if q.gold in pids else None
        for k in ks:
            hits[k] += bool(position and position <= k)
    return {f"R@{k}": round(100.0 * hits[k] / max(1, len(questions)), 1) for k in ks}


def fusions(bm25: list[Ranked], dense: list[Ranked]) -> dict[str, list]:
    """Every fusion tried, by name. Min-max normalization anchors at each list's last score,
    so score fusion also runs on shorter candidate lists (the depth it ships with matters)."""
    lists = {"bm25": bm25, "dense": dense}
    out = {}
    for k in (10, 60):
        for wd in (1.0, 1.5, 2.0, 3.0):
            out[f"rrf k={k} dense:bm25={wd:g}:1"] = fusion.rrf(lists, k, {"dense": wd})
    for wd in (0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9):
        out[f"score w_dense={wd:g}"] = fusion.weighted(
            lists, {"dense": wd, "bm25": round(1 - wd, 3)})
    for depth in (20, 50):
        short = {name: ranked[:depth] for name, ranked in lists.items()}
        for wd in (0.6, 0.65, 0.7):
            out[f"score w_dense={wd:g} depth {depth}"] = fusion.weighted(
                short, {"dense": wd, "bm25": round(1 - wd, 3)})
    # dense first: dense order, a BM25 top-5 passage moved up by its BM25 rank
    boosted = fusion.rrf({"dense": dense, "bm25": bm25[:5]}, 60, {"bm25": 0.5})
    out["dense + bm25 top-5 boost"] = boosted
    return out


def cluster_runs(passages: list[Passage], vectors: np.ndarray, queries: dict[str, np.ndarray],
                 sets: dict[str, list[Question]], root: Path, depth: int, masters: int,
                 dev: Path = corpus.DEV) -> tuple[dict, dict, dict]:
    """BM25 (Lua rank) and dense (VSIM) top-``depth`` lists from a real cluster: ingest,
    index, VADD; returns (bm25 runs, dense runs by quantization, facts) by question set."""
    from bench.testbed import Testbed
    from cluster import capabilities, partitions
    from loaders.writer import ingest, wait_indexed

    docs = corpus.distractors() + corpus.dev_documents(dev)
    with Testbed(root, masters=masters, api=False) as bed:
        bed.start()
        client = bed.client
        if not capabilities.vector_sets(client):
            raise click.ClickException("the bench cluster has no vector sets (Redis 8 needed)")
        pmap = partitions.load(client)
        t0 = time.perf_counter()
        ingest(client, docs, progress=False)
        wait_indexed(client, timeout=1800, progress=False)
        facts = {"ingest_s": round(time.perf_counter() - t0, 1), "vector_sets": {}}
        bm25, ms = timed_runs(sets, lambda q, _v: rank_bm25(client, pmap, q.text, depth),
                              queries, "BM25")
        facts[f"bm25_rank_ms_p50_k{depth}"] = ms
        facts[f"bm25_rank_ms_p50_k{SHIP_DEPTH}"] = timed_runs(
            sets, lambda q, _v: rank_bm25(client, pmap, q.text, SHIP_DEPTH), queries, "BM25")[1]
        dense_runs = {}
        for quant in QUANTIZATIONS:  # Q8 first: what the ingest stage writes
            t0 = time.perf_counter()
            add_vectors(client, pmap, passages, vectors, quant)
            vadd_s = time.perf_counter() - t0
            dense_runs[quant], ms = timed_runs(
                sets, lambda _q, v: search_dense(client, pmap, v, depth), queries, f"VSIM {quant}")
            facts["vector_sets"][quant] = {
                "vadd_per_s": round(len(passages) / vadd_s),
                "bytes_per_passage": round(vector_bytes(client, pmap) / len(passages)),
                f"vsim_ms_p50_k{depth}": ms,
                f"vsim_ms_p50_k{SHIP_DEPTH}": timed_runs(
                    sets, lambda _q, v: search_dense(client, pmap, v, SHIP_DEPTH), queries,
                    f"VSIM {quant}")[1]}
            drop_vectors(client, pmap)
    return bm25, dense_runs, facts


QUANTIZATIONS = ("Q8", "NOQUANT", "BIN")
#: a shorter candidate list, for the latency a production setting would see
SHIP_DEPTH = 20


def rank_bm25(client, pmap, question: str, depth: int) -> list[Ranked]:
    from gears import ranking

    return ranking.rank(client, pmap, question, k=depth)


def search_dense(client, pmap, vector: np.ndarray, depth: int) -> list[Ranked]:
    from gears import dense

    return dense.search(client, pmap, vector, k=depth)


def timed_runs(sets, run, queries, label: str) -> tuple[dict[str, list], float]:
    """run(question, vector) for every question of every set; (runs by set, p50 ms)."""
    from tqdm import tqdm

    runs, times = {}, []
    for name, questions in sets.items():
        runs[name] = []
        for q, v in tqdm(list(zip(questions, queries[name], strict=True)),
                         desc=f"{label} ({name})", file=sys.stderr):
            t0 = time.perf_counter()
            runs[name].append(run(q, v))
            times.append(time.perf_counter() - t0)
    return runs, round(1000 * float(np.median(times)), 2)


def vector_bytes(client, pmap) -> int:
    """MEMORY USAGE of every partition's vector set, summed."""
    from cluster import keys

    return sum(int(client.memory_usage(keys.vectors(p.tag), samples=0) or 0) for p in pmap)


def drop_vectors(client, pmap) -> None:
    from cluster import keys

    for p in pmap:
        client.delete(keys.vectors(p.tag))


def add_vectors(client, pmap, passages: list[Passage], vectors: np.ndarray,
                quant: str = "Q8", batch: int = 500) -> None:
    """VADD every passage vector into its partition's vector set, one pipeline per master
    and batch."""
    from cluster import keys, routing
    from gears.dense import vector_blob

    by_node: dict[str, tuple[object, list[int]]] = {}
    for i, p in enumerate(passages):
        node = routing.owner(client, pmap.for_passage(p.pid).slot)
        by_node.setdefault(node.name, (node, []))[1].append(i)
    for node, rows in by_node.values():
        conn = client.get_redis_connection(node)
        for k in range(0, len(rows), batch):
            pipe = conn.pipeline(transaction=False)
            for i in rows[k:k + batch]:
                tag = pmap.for_passage(passages[i].pid).tag
                pipe.execute_command("VADD", keys.vectors(tag), "FP32", vector_blob(vectors[i]),
                                     passages[i].pid, quant)
            pipe.execute()


# --- the experiment ----------------------------------------------------------------------------

def evaluate(sets, bm25, dense_by_quant, dense_exact) -> dict[str, dict[str, dict]]:
    """method -> question set -> recall@k. Fusions use the Q8 vector sets (what ships)."""
    table: dict[str, dict[str, dict]] = {}
    for name, questions in sets.items():
        methods: dict[str, list] = {"bm25": bm25[name]}
        for quant, runs in dense_by_quant.items():
            methods[f"dense (VSIM {quant})"] = runs[name]
        methods["dense (exact cosine)"] = dense_exact[name]
        q8 = dense_by_quant["Q8"][name]
        per_q = [fusions(b, d) for b, d in zip(bm25[name], q8, strict=True)]
        for method in per_q[0] if per_q else []:
            methods[method] = [f[method] for f in per_q]
        for method, runs in methods.items():
            table.setdefault(method, {})[name] = recall(runs, questions)
    return table


def recommend(table: dict[str, dict[str, dict]]) -> dict:
    """The fusion with the best mean R@5 over both sets (R@1 then R@20 break ties): both
    kinds of question matter, and k=5 is what open mode reads."""
    def key(method):
        rows = table[method].values()
        return tuple(sum(r[f"R@{k}"] for r in rows) / len(rows) for k in (5, 1, 20))

    candidates = [m for m in table if m.startswith(("rrf", "score", "dense +"))]
    best = max(candidates, key=key)
    return {"method": best, "mean_R@5_R@1_R@20": [round(v, 1) for v in key(best)],
            "rule": "best mean R@5 over both question sets; ties by R@1, then R@20"}


def render(table: dict[str, dict[str, dict]]) -> Table:
    sets = list(next(iter(table.values())))
    out = Table("method", *[f"{s} R@1/5/20" for s in sets], title="retrieval recall (%)")
    for method, rows in table.items():
        out.add_row(method, *["{R@1} / {R@5} / {R@20}".format(**rows[s]) for s in sets])
    return out


@click.command()
@click.option("--variant", type=click.Choice(["fp32", "int8"]), default="int8",
              show_default=True, help="encoder variant for the corpus and questions")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/tmp/shardqa-fusion"), show_default=True,
              help="folder for the corpus embeddings (.npy) and the bench cluster")
@click.option("--depth", type=click.IntRange(20, 1000), default=DEPTH, show_default=True,
              help="candidates taken from each retriever before fusing")
@click.option("--max-seq-len", type=click.IntRange(16, 512), default=None,
              help="cut passages at this many tokens [default: the encoder's own]")
@click.option("--masters", type=click.IntRange(1, 8), default=3, show_default=True)
@click.option("--dev", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=corpus.DEV, show_default=True, help="SQuAD v1.1 dev file")
@click.option("--natural", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=NATURAL, show_default=True, help="natural questions (SQuAD format)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON result [default: bench/results/retrieval-fusion-DATE.json]")
def main(variant, cache, depth, max_seq_len, masters, dev, natural, out):
    """Recall@1/5/20 of BM25, dense and their fusions on SQuAD dev and natural questions."""
    import shutil
    import tempfile

    from models.default import default_encoder_artifact

    artifact = default_encoder_artifact(cache / "artifacts")
    passages, sets = corpus_passages(dev), question_sets(dev, natural)
    console.print(f"{len(passages):,} passages; " + ", ".join(
        f"{n}: {len(q):,} questions" for n, q in sets.items()))
    speed = throughput(artifact, passages, [q.text for q in sets["natural"]],
                       max_seq_len=max_seq_len)
    console.print(f"embedding speed: {json.dumps(speed)}")
    encoder = load_encoder(artifact, variant, max_seq_len=max_seq_len)
    version = json.loads((artifact / "shardqa-model.json").read_text())["version"]
    label = f"{version}-{variant}" + (f"-{max_seq_len}" if max_seq_len else "")
    vectors = embed_corpus(encoder, passages, cache, label)
    queries = {n: encoder.embed([q.text for q in qs]) for n, qs in sets.items()}
    pids = [p.pid for p in passages]
    exact = {n: exact_dense(vectors, queries[n], depth, pids) for n in sets}
    root = Path(tempfile.mkdtemp(prefix="fusion-", dir=cache))
    try:
        bm25, vsim, facts = cluster_runs(passages, vectors, queries, sets, root, depth, masters,
                                         dev)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = evaluate(sets, bm25, vsim, exact)
    console.print(render(table))
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "corpus_passages": len(passages), "questions": {n: len(q) for n, q in sets.items()},
              "encoder": {"artifact": artifact.name, "version": version, "variant": variant,
                          "max_seq_len": encoder.max_seq_len},
              "depth": depth, "masters": masters, "embedding_throughput": speed,
              "cluster": facts, "recall": table, "recommendation": recommend(table)}
    out = out or RESULTS / f"retrieval-fusion-{time.strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"recommendation: {result['recommendation']}; wrote {out}")


if __name__ == "__main__":
    main()
