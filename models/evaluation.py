"""Scoring a reader on SQuAD-format questions: per-question results, the report, reader mode.

Reader mode gives the reader each question with its own paragraph, through the same runtime
the workers use (``models.reader.Reader`` on passages tokenized by ``models.tokenization``),
so the score is the reader's, not the retriever's. Open mode (the whole system) is a client
of the running cluster and lives in ``shardqa.evaluation``; both report through here.
Answers are deterministic for a given model; only the latencies vary between runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cluster.errors import ShardqaError
from models.squad import SquadExample, score_answer

if TYPE_CHECKING:  # the CLI imports this module; torch loads only when a reader does
    from models.reader import Reader

stderr = Console(stderr=True, highlight=False)

DEFAULT_STRIDE = 128  # the shard worker's window overlap (gears.worker.WorkerSettings.stride)


class EvaluationError(ShardqaError):
    """The evaluation cannot run as asked (empty file, bad stride, ...)."""

    exit_code = 2


@dataclass
class QuestionResult:
    id: str
    prediction: str
    exact_match: float
    f1: float
    latency_ms: float
    cached: bool = False
    gold_rank: int | None = None  # 1-based rank of the gold paragraph among passages read
    error: str | None = None


@dataclass
class EvalReport:
    file: str
    mode: str
    model: str
    count: int
    exact_match: float
    f1: float
    recall: dict[str, float] | None
    latency_ms: dict[str, float]
    cache_hit_rate: float | None
    errors: int
    k: int | None = None
    predictions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def percentiles(ms: list[float], qs: tuple[float, ...] = (50, 95, 99)) -> dict:
    """p50/p95/p99 (or ``qs``; p99.9 is named p999), mean and min in milliseconds (3
    decimals), and the count: every latency figure shardqa reports (eval, bench, soak) is
    summarised by this one function."""
    if not ms:
        return {"n": 0}
    arr = np.asarray(ms, dtype=np.float64)
    out: dict = {"n": int(arr.size)}
    for q, value in zip(qs, np.percentile(arr, qs), strict=True):
        out["p" + f"{q:g}".replace(".", "")] = round(float(value), 3)
    out["mean"], out["min"] = round(float(arr.mean()), 3), round(float(arr.min()), 3)
    return out


def summarize(results: list[QuestionResult], *, file: str, mode: str, model: str,
              k: int | None = None) -> EvalReport:
    """EM/F1 in percent, recall@1/@5/@k (open mode), latency percentiles, cache hit rate."""
    n = len(results)
    stats = percentiles([r.latency_ms for r in results])
    latency = {name: float(stats.get(name, 0.0)) for name in ("p50", "p95", "p99", "mean")}
    recall = None
    if mode == "open" and k is not None:
        recall = {}
        for at in sorted({1, 5, k}):
            if at <= k:
                hits = sum(1 for r in results if r.gold_rank is not None and r.gold_rank <= at)
                recall[str(at)] = 100.0 * hits / n if n else 0.0
    return EvalReport(
        file=file, mode=mode, model=model, count=n,
        exact_match=100.0 * sum(r.exact_match for r in results) / n if n else 0.0,
        f1=100.0 * sum(r.f1 for r in results) / n if n else 0.0,
        recall=recall, latency_ms=latency,
        cache_hit_rate=(sum(r.cached for r in results) / n if n else 0.0)
        if mode == "open" else None,
        errors=sum(1 for r in results if r.error), k=k,
        predictions={r.id: r.prediction for r in results},
    )


def _progress(enabled: bool, what: str) -> Progress:
    return Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[score]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=stderr, transient=True,
                    disable=not enabled)


def run_questions(examples: list[SquadExample],
                  answer: Callable[[SquadExample], QuestionResult],
                  progress: bool, what: str) -> list[QuestionResult]:
    """Answer every example in order, with a bar showing the running F1."""
    results: list[QuestionResult] = []
    with _progress(progress, what) as bar:
        task = bar.add_task(what, total=len(examples), score="")
        for example in examples:
            results.append(answer(example))
            f1_so_far = 100.0 * sum(r.f1 for r in results) / len(results)
            bar.update(task, advance=1, score=f"F1 {f1_so_far:.1f}")
    return results


def evaluate_reader(examples: list[SquadExample], reader: Reader, *,
                    stride: int = DEFAULT_STRIDE, progress: bool = True
                    ) -> list[QuestionResult]:
    """Each question read against its own paragraph only (tokenized once per paragraph)."""
    from models.tokenization import tokenize_passages, window_token_budget

    window = window_token_budget(reader.max_seq_len, reader.max_question_tokens,
                                 reader.layout.special_tokens)
    if not 0 <= stride < window:
        raise EvaluationError(f"--stride must be in [0, {window}) for this model")
    contexts = list(dict.fromkeys(e.context for e in examples))
    tokens = dict(zip(contexts, tokenize_passages(reader.tokenizer, contexts, window, stride),
                      strict=True))

    def answer(example: SquadExample) -> QuestionResult:
        t0 = time.perf_counter()
        span = reader.read(example.question, [(example.context, tokens[example.context])])
        latency = (time.perf_counter() - t0) * 1000
        text = span.text if span is not None else ""
        em, f1 = score_answer(text, example.answers)
        return QuestionResult(example.id, text, em, f1, latency)

    return run_questions(examples, answer, progress, "reading")
