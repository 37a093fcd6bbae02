"""Which fused candidates the reader reads, chosen on data (issue 13's latency goal).

Reading a passage is the cost of an uncached question: hybrid asking read 3.7-3.8 passages
a question (one reader window each) where BM25 alone read 1.7-2.7. This bench asks every
question of the natural dev set and of SQuAD dev once through the running system's
retrieval (hybrid: BM25 and VSIM fused, gears/retrieval.py), has the shard workers read
*all* of its top k (one read request per partition, as the asker sends them), keeps every
passage's best span, and then replays each read rule on those reads: which passages a rule
reads, whether the right one is among them ("read %"), the answer the asker's merge would
pick (gears.asker.answer_score with the rule's retrieval weight) and its EM/F1, and how
many passages and windows it reads. Nothing but the choice of passages differs between
rules, so their figures compare exactly.

    python -m bench.read_floor --dir CLUSTER [--k 5] [--reads FILE] [--out FILE]

``--reads`` keeps the raw reads (JSON) so rules can be replayed without asking again.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from bench.retrieval_fusion import NATURAL
from cluster import keys
from cluster.options import target_options
from gears import ranking
from gears.asker import Asker, answer_score
from gears.retrieval import QUESTION_THREADS
from models.squad import read_squad, score_answer
from shardqa import datasets

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Rule:
    """Which of a question's fused candidates (best first) are read."""

    name: str
    pick: Callable[[list[dict]], list[dict]]


def ratio_rule(ratio: float, cap: int | None = None) -> Rule:
    """The asker's floor: candidates scoring at least ``ratio`` x the best (at most ``cap``)."""
    def pick(cands):
        kept = ranking.above_floor(_ranked(cands), ratio)
        return cands[:len(kept)][:cap]
    return Rule(f"ratio {ratio:g}" + (f", at most {cap}" if cap else ""), pick)


def gap_rule(gap: float, cap: int | None = None) -> Rule:
    """Candidates whose fused score is within ``gap`` of the best (fused scores are
    min-max normalized sums, at most 1)."""
    def pick(cands):
        top = cands[0]["score"] if cands else 0.0
        return [c for c in cands if c["score"] >= top - gap][:cap]
    return Rule(f"gap {gap:g}" + (f", at most {cap}" if cap else ""), pick)


def leaders_rule(dense: int, bm25: int, gap: float | None = None) -> Rule:
    """The best fused candidate, and any other that ranks in the top ``dense`` of the dense
    list or the top ``bm25`` of BM25's (or, with ``gap``, is that close to the best)."""
    def pick(cands):
        top = cands[0]["score"] if cands else 0.0
        return [c for i, c in enumerate(cands)
                if i == 0 or c["ranks"].get("dense", 10**6) <= dense
                or c["ranks"].get("bm25", 10**6) <= bm25
                or (gap is not None and c["score"] >= top - gap)]
    return Rule(f"leaders dense<={dense} bm25<={bm25}" + (f" or gap {gap:g}" if gap else ""),
                pick)


def _ranked(cands: list[dict]) -> list[ranking.Ranked]:
    return [ranking.Ranked(c["pid"], c["partition"], c["score"]) for c in cands]


def rules() -> list[Rule]:
    out = [ratio_rule(0.0), ratio_rule(1.0)]
    out += [ratio_rule(r) for r in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)]
    out += [ratio_rule(r, cap) for r in (0.5, 0.6, 0.7) for cap in (2, 3, 4)]
    out += [gap_rule(g) for g in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)]
    out += [gap_rule(g, cap) for g in (0.15, 0.2, 0.3) for cap in (2, 3)]
    out += [leaders_rule(d, b) for d, b in ((1, 0), (0, 1), (1, 1), (2, 1), (1, 2), (2, 2))]
    out += [leaders_rule(1, 1, g) for g in (0.05, 0.1, 0.15)]
    return out


WEIGHTS = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0)


# --- asking once, reading everything -----------------------------------------------------

def question_sets(dev: Path, natural: Path) -> dict[str, list]:
    return {"natural": read_squad(natural), "squad-dev": read_squad(dev)}


def collect(client, sets: dict[str, list], k: int, progress: bool = True) -> dict[str, list]:
    """Every question's fused top ``k`` and the best span of every one of them."""
    from tqdm import tqdm

    from cluster.partitions import passage_id

    asker = Asker(client, min_rank_ratio=0.0, encoder_threads=QUESTION_THREADS)
    out: dict[str, list] = {}
    for name, examples in sets.items():
        rows = out[name] = []
        for ex in tqdm(examples, desc=f"reading all {k} ({name})", file=sys.stderr,
                       disable=not progress):
            t0 = time.perf_counter()
            found = asker.retrieve(ex.question, k)
            retrieve_ms = (time.perf_counter() - t0) * 1000
            cands = [{"pid": f.pid, "partition": f.partition, "score": f.score,
                      "ranks": f.ranks} for f in found.passages]
            replies, _wait = asker._read(ex.question, found.passages) if cands else ([], 0.0)
            spans = {s.pid: {"text": s.text, "score": s.score}
                     for r in replies for s in r.spans if not s.null}
            rows.append({"id": ex.id, "question": ex.question, "answers": list(ex.answers),
                         "gold": passage_id(ex.title, ex.paragraph_index), "mode": found.mode,
                         "candidates": cands, "spans": spans,
                         "windows": windows(client, asker, [c["pid"] for c in cands]),
                         "retrieve_ms": round(retrieve_ms, 2)})
    return out


def windows(client, asker: Asker, pids: list[str]) -> dict[str, int]:
    """pid -> token windows the reader reads for it (from the partition's window counts)."""
    out = {}
    for pid in pids:
        tag = asker.pmap.for_passage(pid).tag
        out[pid] = int(client.hget(keys.index_windows(tag), pid) or 1)
    return out


# --- replaying rules ---------------------------------------------------------------------

def replay(rows: list[dict], rule: Rule, weight: float) -> dict:
    """What asking with ``rule`` and ``weight`` gives on these reads."""
    ems, f1s, read_hits, passages, wins = [], [], 0, [], []
    for row in rows:
        chosen = rule.pick(row["candidates"])
        read_hits += any(c["pid"] == row["gold"] for c in chosen)
        passages.append(len(chosen))
        wins.append(sum(row["windows"].get(c["pid"], 1) for c in chosen))
        text = best_answer(row, chosen, weight)
        em, f1 = score_answer(text, row["answers"])
        ems.append(em)
        f1s.append(f1)
    n = max(1, len(rows))
    return {"read_pct": round(100 * read_hits / n, 1), "f1": round(100 * statistics.mean(f1s), 2),
            "em": round(100 * statistics.mean(ems), 2),
            "passages": round(statistics.mean(passages), 2),
            "windows": round(statistics.mean(wins), 2)}


def best_answer(row: dict, chosen: list[dict], weight: float) -> str:
    """The asker's merge (gears.asker.Asker._merge) over the chosen passages' spans."""
    if not chosen:
        return ""
    retrieved = {c["pid"]: c["score"] for c in chosen}
    top = max(retrieved.values())
    spans = [(pid, s) for pid, s in row["spans"].items() if pid in retrieved]
    if not spans:
        return ""
    _pid, span = min(spans, key=lambda ps: (-answer_score(ps[1]["score"], retrieved[ps[0]],
                                                          top, weight), ps[0]))
    return span["text"]


def table(reads: dict[str, list]) -> list[dict]:
    out = []
    for rule in rules():
        for weight in WEIGHTS:
            out.append({"rule": rule.name, "weight": weight,
                        **{name: replay(rows, rule, weight) for name, rows in reads.items()}})
    return out


@click.command()
@click.option("--k", default=5, show_default=True, type=click.IntRange(1, 50))
@click.option("--dev", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=datasets.SQUAD_DEV, show_default=True)
@click.option("--natural", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=NATURAL, show_default=True)
@click.option("--reads", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="raw reads: replayed from this file if it exists, else written to it")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON result [default: bench/results/read-floor-DATE.json]")
@target_options
def main(k, dev, natural, reads, out, target):
    """Read %, F1 and passages read of each read rule on natural and SQuAD dev questions."""
    if reads is not None and reads.is_file():
        raw = json.loads(reads.read_text())
    else:
        from cluster.connection import connect

        client = connect(target)
        try:
            raw = collect(client, question_sets(dev, natural), k, sys.stderr.isatty())
        finally:
            client.close()
        if reads is not None:
            reads.write_text(json.dumps(raw) + "\n")
    rows = table(raw)
    for row in rows:
        print(f"{row['rule']:<22} w={row['weight']:<4g} " + "  ".join(
            f"{name}: read {r['read_pct']:5.1f} F1 {r['f1']:5.2f} p {r['passages']:.2f}"
            for name, r in row.items() if isinstance(r, dict)))
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "k": k,
              "questions": {n: len(v) for n, v in raw.items()},
              "modes": {n: sorted({r["mode"] for r in v}) for n, v in raw.items()},
              "rows": rows}
    out = out or RESULTS / f"read-floor-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
