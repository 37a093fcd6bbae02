"""Choosing the candidate floor and the retrieval weight on data (the asker's two settings).

Every question's top k is retrieved from a real cluster (BM25 ``rank`` in Redis, or hybrid:
BM25 and VSIM fused) and every candidate read once by the reader (``--variant``, fp32 or
int8); each setting is
then replayed on those spans as the asker merges them (gears.asker): the candidates scoring
at least ``ratio`` x the best are read, and an answer scores its span score plus ``weight``
x its passage's relative retrieval score. Per setting: F1 and EM against the gold answers,
passages and windows read a question, and how often the gold paragraph is among those read,
per question set (SQuAD dev; ``--set natural`` adds the natural questions). Only quality is
measured (no times), so a loaded machine gives the same figures.

    python -m bench.floor_sweep [--retrieval bm25|hybrid] [--set squad-dev --set natural]
                                [--questions N] [--out FILE] [--running --dir CLUSTER]
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from rich.console import Console

from bench import corpus
from bench.options import load_reader
from bench.testbed import Testbed
from cluster import keys, partitions
from cluster.options import target_options
from cluster.partitions import passage_id
from gears import retrieval
from gears.asker import (
    HYBRID_MIN_RANK_RATIO,
    HYBRID_RETRIEVAL_WEIGHT,
    MIN_RANK_RATIO,
    RETRIEVAL_WEIGHT,
    answer_score,
    normalize,
)
from models.squad import SquadExample, read_squad, score_answer
from models.tokenization import PassageTokens
from shardqa import datasets

console = Console(highlight=False, stderr=True)
RESULTS = Path(__file__).resolve().parent / "results"
RATIOS = (0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0)  # 0: every candidate read
WEIGHTS = (0.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0)
SHIPPED = {"bm25": (MIN_RANK_RATIO, RETRIEVAL_WEIGHT),
           "hybrid": (HYBRID_MIN_RANK_RATIO, HYBRID_RETRIEVAL_WEIGHT)}
SETS = {"squad-dev": datasets.SQUAD_DEV, "natural": datasets.NATURAL_DEV}


@dataclass
class Candidate:
    pid: str
    score: float  # retrieval score (BM25, or fused)
    text: str
    tokens: PassageTokens
    span: object = None  # the reader's best span in it (models.reader.Span), or None


def retrieve(client, pmap, example: SquadExample, k: int,
             encoder: retrieval.QuestionEncoder | None) -> list[Candidate]:
    """The question's top k (hybrid with ``encoder``, else BM25), with text and tokens."""
    q = normalize(example.question)
    plan = encoder.current(pmap) if encoder is not None else None
    found = (retrieval.hybrid(client, pmap, q, k, plan, encoder.embed(q, plan))
             if plan is not None else retrieval.bm25_only(client, pmap, q, k)).passages
    pipe = client.pipeline(transaction=False)
    for f in found:
        pipe.hmget(keys.passage(pmap.for_passage(f.pid).tag, f.pid),
                   ["text", "tok_ids", "tok_offs", "tok_wins"])
    out = []
    for f, (text, ids, offs, wins) in zip(found, pipe.execute() if found else [], strict=True):
        tokens = PassageTokens.unpack({"tok_ids": ids, "tok_offs": offs, "tok_wins": wins}) \
            if ids is not None else None
        if text is not None and tokens is not None:
            out.append(Candidate(f.pid, f.score, text.decode("utf-8"), tokens))
    return out


def replay(examples: list[SquadExample], cands: list[list[Candidate]], ratio: float,
           weight: float) -> dict:
    """One setting on spans read once: what the asker would have answered."""
    f1, em, passages, windows, gold = [], [], [], [], []
    for e, found in zip(examples, cands, strict=True):
        top = found[0].score if found else 0.0
        read = [c for c in found if ratio <= 0 or c.score >= ratio * top]
        scored = [(answer_score(c.span.score, c.score, top, weight), c.pid, c.span)
                  for c in read if c.span is not None and not c.span.null]
        best = min(scored, key=lambda x: (-x[0], x[1], x[2].start, x[2].end), default=None)
        exact, f = score_answer(best[2].text if best else "", e.answers)
        em.append(exact)
        f1.append(f)
        passages.append(len(read))
        windows.append(sum(len(c.tokens.windows) for c in read))
        gold.append(any(c.pid == passage_id(e.title, e.paragraph_index) for c in read))
    return {"ratio": ratio, "weight": weight, "f1": round(100 * float(np.mean(f1)), 2),
            "exact_match": round(100 * float(np.mean(em)), 2),
            "passages": round(float(np.mean(passages)), 2),
            "windows": round(float(np.mean(windows)), 2),
            "gold_read_pct": round(100 * float(np.mean(gold)), 1)}


def gather(sets: dict[str, list[SquadExample]], k: int, mode: str, masters: int,
           threads: int, artifact: Path, root: Path) -> tuple[dict[str, list], int]:
    """Each set's questions' top k from one real deployment of the corpus; (candidates per
    set, passages in the corpus)."""
    encoder_artifact = None
    if mode == "hybrid":
        from models.default import default_encoder_artifact

        encoder_artifact = default_encoder_artifact()
    with Testbed(root, masters=masters, threads=threads, api=False) as bed:
        bed.start(artifact, "fp32", encoder=encoder_artifact)
        console.print("ingesting the dev paragraphs and the Wikipedia summaries"
                      + (" (embedding them)" if encoder_artifact else ""))
        ingested = bed.timed_ingest(corpus.dev_documents() + corpus.distractors())
        return candidates_of(bed.client, sets, k, mode), ingested["passages"]


def candidates_of(client, sets: dict[str, list[SquadExample]], k: int, mode: str
                  ) -> dict[str, list]:
    """Each set's questions' top k from the cluster ``client`` talks to."""
    pmap = partitions.load(client)
    encoder = None
    if mode == "hybrid":
        encoder = retrieval.QuestionEncoder(client, threads=retrieval.QUESTION_THREADS)
        if encoder.current(pmap) is None:
            raise click.ClickException(f"the cluster cannot rank hybrid: {encoder.why}")
    return {name: [retrieve(client, pmap, e, k, encoder) for e in examples]
            for name, examples in sets.items()}


def read_once(reader, examples: list[SquadExample], cands: list[list[Candidate]]) -> None:
    """The reader's best span in every candidate, each question's read in one call."""
    for e, found in zip(examples, cands, strict=True):
        spans = reader.read_many([(normalize(e.question), [(c.text, c.tokens) for c in found])])
        for c, span in zip(found, spans[0], strict=True):
            c.span = span


@click.command()
@click.option("--retrieval", "mode", type=click.Choice(sorted(SHIPPED)), default="bm25",
              show_default=True)
@click.option("--set", "names", type=click.Choice(sorted(SETS)), multiple=True,
              default=("squad-dev",), show_default=True, help="question sets (repeatable)")
@click.option("--questions", type=click.IntRange(1), default=None,
              help="the first N questions of each set (file order) [default: all]")
@click.option("--k", type=click.IntRange(1, 50), default=5, show_default=True)
@click.option("--masters", type=click.IntRange(1, 8), default=2, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True,
              help="torch threads (workers, then the reader)")
@click.option("--variant", type=click.Choice(["fp32", "int8"]), default="fp32",
              show_default=True, help="the reader variant that reads the candidates")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON result [default: bench/results/floor-sweep-MODE-DATE.json]")
@click.option("--running", is_flag=True,
              help="rank on the running cluster that --dir / --redis name (its corpus as it "
                   "is) instead of deploying one")
@target_options
def main(mode, names, questions, k, masters, threads, variant, out, running, target):
    """F1 of every candidate floor x retrieval weight, open mode, per question set."""
    from models.default import default_artifact

    artifact = default_artifact()
    sets = {n: [e for e in read_squad(SETS[n]) if e.has_answer][:questions] for n in names}
    if running:
        from cluster.connection import connect

        client = connect(target)
        try:
            cands, size = candidates_of(client, sets, k, mode), _passages(client)
        finally:
            client.close()
    else:
        root = Path(tempfile.mkdtemp(prefix="floor-sweep-"))
        try:
            cands, size = gather(sets, k, mode, masters, threads, artifact, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    reader = load_reader(artifact, variant, threads)
    ratio, weight = SHIPPED[mode]
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "retrieval": mode,
              "k": k, "corpus_passages": size, "reader": f"{artifact.name} {variant}",
              "shipped": {"ratio": ratio, "weight": weight}, "sets": {}}
    for name, examples in sets.items():
        console.print(f"{name}: reading the top {k} of {len(examples):,} questions once")
        read_once(reader, examples, cands[name])
        grid = [replay(examples, cands[name], r, w) for r in RATIOS for w in WEIGHTS]
        result["sets"][name] = {"file": datasets.shown(SETS[name]), "questions": len(examples),
                                "shipped_row": replay(examples, cands[name], ratio, weight),
                                "grid": grid}
        for row in grid:
            console.print(f"{name} ratio {row['ratio']:<4} weight {row['weight']:<4} F1 "
                          f"{row['f1']:6.2f} passages {row['passages']:.2f} gold read "
                          f"{row['gold_read_pct']:.1f} %")
    suffix = "" if variant == "fp32" else f"-{variant}"
    out = out or RESULTS / f"floor-sweep-{mode}{suffix}-{time.strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")


def _passages(client) -> int:
    """Passages indexed in the cluster (every partition's BM25 count)."""
    return sum(int(client.hget(keys.index_stats(p.tag), "n") or 0)
               for p in partitions.load(client))


if __name__ == "__main__":
    main()
