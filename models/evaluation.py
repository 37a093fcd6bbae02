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
from models.tokenization import DEFAULT_STRIDE

if TYPE_CHECKING:  # the CLI imports this module; torch loads only when a reader does
    from models.reader import Reader

stderr = Console(stderr=True, highlight=False)



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
    read: int | None = None  # open mode: how many passages were read
    retrieval: str | None = None  # open mode: "hybrid" or "bm25"
    error: str | None = None
    has_answer: bool = True  # False for SQuAD 2.0's unanswerable questions
    confidence: float | None = None
    #: reader mode, for fitting: the best span even when abstaining, its score, the null
    #: score, and the passage's highest candidate span scores
    candidate: str = ""
    span_score: float | None = None
    null_score: float | None = None
    candidates: tuple[float, ...] = ()


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
    #: SQuAD 2.0 files: EM/F1/count over the answerable (HasAns) and unanswerable (NoAns)
    by_kind: dict[str, dict[str, float]] | None = None
    #: expected calibration error (percent) of the answers' confidences, and the settings
    #: fitted on this file (null_threshold, temperature) with the ECE before fitting
    calibration: dict[str, float] | None = None
    fitted: dict[str, float] = field(default_factory=dict)
    predictions: dict[str, str] = field(default_factory=dict)
    #: open mode: mean passages read per question, and questions per retrieval mode
    passages_read: float | None = None
    retrieval: dict[str, int] | None = None
    #: with a minimum confidence: how many questions were answered and how many were not
    #: (abstained, or nothing found), and EM/F1 over the answered ones alone
    coverage: dict[str, float] | None = None

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
              k: int | None = None, min_confidence: float | None = None) -> EvalReport:
    """EM/F1 in percent, recall@1/@5/@k (open mode), latency percentiles, cache hit rate;
    with ``min_confidence``, the coverage too."""
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
        by_kind=_by_kind(results), calibration=_calibration(results),
        predictions={r.id: r.prediction for r in results},
        passages_read=(sum(r.read or 0 for r in results) / n if n else 0.0)
        if mode == "open" else None,
        retrieval=_modes(results) if mode == "open" else None,
        coverage=None if min_confidence is None else coverage(results, min_confidence),
    )


def coverage(results: list[QuestionResult], min_confidence: float) -> dict[str, float]:
    """What a minimum confidence buys: questions answered and not (errors aside), and EM
    and F1 in percent over the answered ones (what a user who abstains gets right)."""
    answered = [r for r in results if r.prediction and not r.error]
    n = len(answered)
    return {"min_confidence": min_confidence, "answered": n,
            "abstained": sum(1 for r in results if not r.prediction and not r.error),
            "exact_match": 100.0 * sum(r.exact_match for r in answered) / n if n else 0.0,
            "f1": 100.0 * sum(r.f1 for r in answered) / n if n else 0.0}


def _modes(results: list[QuestionResult]) -> dict[str, int]:
    modes: dict[str, int] = {}
    for r in results:
        if r.retrieval:
            modes[r.retrieval] = modes.get(r.retrieval, 0) + 1
    return modes


def _by_kind(results: list[QuestionResult]) -> dict[str, dict[str, float]] | None:
    """HasAns / NoAns EM and F1 as the official SQuAD 2.0 script, if any is unanswerable."""
    if all(r.has_answer for r in results):
        return None
    out = {}
    for kind, wanted in (("HasAns", True), ("NoAns", False)):
        part = [r for r in results if r.has_answer is wanted]
        n = len(part)
        out[kind] = {"exact_match": 100.0 * sum(r.exact_match for r in part) / n if n else 0.0,
                     "f1": 100.0 * sum(r.f1 for r in part) / n if n else 0.0, "count": n}
    return out


def _calibration(results: list[QuestionResult]) -> dict[str, float] | None:
    """ECE (percent) of the confidences of the questions answered, when they have some."""
    from models.calibration import reliability

    answered = [r for r in results if r.confidence is not None and r.prediction]
    if not answered:
        return None
    ece, _rows = reliability([r.confidence for r in answered],
                             [r.exact_match for r in answered])
    return {"ece": 100.0 * ece, "answered": len(answered)}


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
        if span is None:
            em, f1 = score_answer("", example.answers)
            return QuestionResult(example.id, "", em, f1, latency,
                                  has_answer=example.has_answer)
        text = "" if span.null else span.text
        em, f1 = score_answer(text, example.answers)
        return QuestionResult(example.id, text, em, f1, latency, has_answer=example.has_answer,
                              confidence=span.confidence, candidate=span.text,
                              span_score=span.score, null_score=span.null_score,
                              candidates=span.candidates)

    return run_questions(examples, answer, progress, "reading")


def fit_reading(results: list[QuestionResult], examples: list[SquadExample], *,
                null_threshold: bool, temperature: bool, current_temperature: float = 1.0
                ) -> dict[str, float]:
    """Fit the null threshold and/or the temperature on these reader-mode results, and
    re-decide every prediction (and confidence) with what was fitted."""
    from models.calibration import confidences, fit_null_threshold, fit_temperature, reliability
    from models.decoding import says_no_answer

    golds = {e.id: e.answers for e in examples}
    fitted: dict[str, float] = {}
    if null_threshold:
        usable = [r for r in results if r.null_score is not None and r.span_score is not None]
        if not usable:
            raise EvaluationError("no question was read: nothing to fit a null threshold on")
        threshold, _f1 = fit_null_threshold(
            [r.null_score - r.span_score for r in usable],
            [score_answer(r.candidate, golds[r.id])[1] for r in usable],
            [score_answer("", golds[r.id])[1] for r in usable])
        fitted["null_threshold"] = threshold
        for r in usable:
            null = says_no_answer(r.span_score, r.null_score, threshold)
            r.prediction = "" if null else r.candidate
            r.exact_match, r.f1 = score_answer(r.prediction, golds[r.id])
    if temperature:
        usable = [r for r in results if r.candidates and r.has_answer]
        if not usable:
            raise EvaluationError("no answerable question was read: nothing to fit a "
                                  "temperature on")
        candidates = [r.candidates for r in usable]
        correct = [score_answer(r.candidate, golds[r.id])[0] for r in usable]
        before, _rows = reliability(confidences(candidates, current_temperature), correct)
        fitted["temperature"] = fit_temperature(candidates, correct)
        fitted["ece_before"] = 100.0 * before
        for r in results:
            if r.candidates:
                r.confidence = float(confidences([r.candidates], fitted["temperature"])[0])
    return fitted
