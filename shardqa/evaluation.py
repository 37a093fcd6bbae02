"""``shardqa eval``: SQuAD-format evaluation of the reader alone or of the whole system.

``reader`` mode scores the reader on each question's own paragraph (models.evaluation).
``open`` mode is a client of the running cluster: it ingests the file's paragraphs and asks
every question through the full pipeline (cache, ranking, shard workers), reporting
retrieval recall next to EM/F1.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from cluster.errors import ShardqaError
from cluster.options import target_options
from gears import selection
from gears.asker import (
    DEFAULT_K,
    HYBRID_MIN_RANK_RATIO,
    HYBRID_RETRIEVAL_WEIGHT,
    MAX_K,
    MIN_RANK_RATIO,
    RETRIEVAL_WEIGHT,
)
from gears.retrieval import DEFAULT_MODE, MODES, QUESTION_THREADS
from models.calibration import reliability_plot
from models.evaluation import (
    DEFAULT_STRIDE,
    EvalReport,
    EvaluationError,
    QuestionResult,
    evaluate_reader,
    fit_reading,
    run_questions,
    summarize,
)
from models.squad import SquadExample, read_squad, score_answer
from models.variants import ARTIFACT_VARIANTS
from shardqa import datasets

console = Console(highlight=False)


@dataclass(frozen=True)
class ReaderFit:
    """What reader mode fits or changes on the file (all off by default)."""

    null_threshold: bool = False
    temperature: bool = False
    min_confidence: float | None = None
    plot: str | None = None  # reliability diagram PNG
    save: bool = False       # write what was fitted into the artifact's metadata


def ingest_file(client, path: str, progress: bool = True):
    """Every paragraph of the SQuAD file into the cluster, then wait for the workers to
    index it and to embed every stored passage (a re-embed under way is part of it)."""
    from loaders.documents import read_documents
    from shardqa.stack import load_corpus

    return load_corpus(client, read_documents([path], "squad"), source=path, progress=progress)


def evaluate_open(client, examples: list[SquadExample], *, k: int = DEFAULT_K, asker=None,
                  progress: bool = True, use_cache: bool = True) -> list[QuestionResult]:
    """Ask every question through the pipeline; the gold passage is paragraph i of article T."""
    from cluster.partitions import passage_id
    from gears.asker import Asker

    asker = asker or Asker(client)

    def answer(example: SquadExample) -> QuestionResult:
        gold = passage_id(example.title, example.paragraph_index)
        t0 = time.perf_counter()
        try:
            got = asker.ask(example.question, k=k, use_cache=use_cache)
        except ShardqaError as exc:
            latency = (time.perf_counter() - t0) * 1000
            return QuestionResult(example.id, "", 0.0, 0.0, latency, error=str(exc),
                                  has_answer=example.has_answer)
        latency = float((got.timings_ms or {}).get("total", (time.perf_counter() - t0) * 1000))
        text = got.answer or ""
        em, f1 = score_answer(text, example.answers)
        read = list(got.passages_read or [])
        rank = read.index(gold) + 1 if gold in read else None
        return QuestionResult(example.id, text, em, f1, latency, cached=bool(got.cached),
                              gold_rank=rank, has_answer=example.has_answer,
                              confidence=got.confidence, read=len(read),
                              retrieval=(got.retrieval or {}).get("mode"))

    return run_questions(examples, answer, progress, "asking")


def pushed_model(client) -> str:
    """Name and version of the model current on the masters, for the report."""
    try:
        from models import store

        rows = [r for r in store.list_models(client)
                if r.get("current_on") and r.get("kind", "reader") == "reader"]
    except Exception:  # noqa: BLE001 - the report still stands without the model's name
        return "pushed model"
    return ", ".join(f"{r['name']} {r['version']} {r['variant']}" for r in rows) or "none"


def render(report: EvalReport) -> Table:
    table = Table("metric", "value", title=f"shardqa eval ({report.mode}): {report.file}")
    table.add_row("model", report.model)
    table.add_row("questions", f"{report.count:,}")
    table.add_row("exact match", f"{report.exact_match:.2f}")
    table.add_row("F1", f"{report.f1:.2f}")
    for at, value in (report.recall or {}).items():
        table.add_row(f"recall@{at}", f"{value:.2f}")
    lat = report.latency_ms
    table.add_row("latency ms p50/p95/p99",
                  f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f}")
    table.add_row("cache hit rate",
                  "n/a (reader mode)" if report.cache_hit_rate is None
                  else f"{100 * report.cache_hit_rate:.1f}%")
    for kind, row in (report.by_kind or {}).items():
        table.add_row(f"{kind} EM / F1 ({row['count']:,})",
                      f"{row['exact_match']:.2f} / {row['f1']:.2f}")
    if report.calibration:
        table.add_row("calibration error (ECE)", f"{report.calibration['ece']:.2f}")
    for name, value in report.fitted.items():
        table.add_row(f"fitted {name}" if name != "ece_before" else "ECE before fitting",
                      f"{value:.4g}")
    if report.coverage:
        cover = report.coverage
        table.add_row(f"answered / abstained (min confidence {cover['min_confidence']:g})",
                      f"{cover['answered']:,} / {cover['abstained']:,}")
        table.add_row("answered EM / F1", f"{cover['exact_match']:.2f} / {cover['f1']:.2f}")
    if report.passages_read is not None:
        table.add_row("passages read per question", f"{report.passages_read:.2f}")
    if report.retrieval:
        table.add_row("retrieval", ", ".join(f"{m} {n:,}" for m, n in report.retrieval.items()))
    if report.errors:
        table.add_row("errors", str(report.errors))
    return table


def reader_report(file: str, examples: list[SquadExample], model_path: str | None, *,
                  variant: str, max_seq_len: int | None, stride: int, threads: int | None,
                  progress: bool, fit: ReaderFit | None = None) -> EvalReport:
    """Reader mode: the model at ``model_path`` (default: the bundled reader) on gold
    paragraphs; with ``fit``, the null threshold / temperature fitted on them."""
    from models.artifact import load_reader

    fit = fit or ReaderFit()
    if model_path is None:
        from models.default import default_artifact

        model_path = str(default_artifact())
    reader, described = load_reader(model_path, variant=variant, max_seq_len=max_seq_len,
                                    threads=threads)
    if fit.min_confidence is not None:
        reader.min_confidence = fit.min_confidence
    if fit.null_threshold:
        reader.null_threshold = None  # read every span; the fitted threshold decides after
    if fit.temperature or fit.plot:
        reader.keep_candidates = 64
    reader.warm_up()
    results = evaluate_reader(examples, reader, stride=stride, progress=progress)
    before = [(r.confidence, r.exact_match) for r in results if r.prediction and r.confidence]
    fitted = fit_reading(results, examples, null_threshold=fit.null_threshold,
                         temperature=fit.temperature, current_temperature=reader.temperature)
    report = summarize(results, file=file, mode="reader", model=described,
                       min_confidence=fit.min_confidence)
    report.fitted = fitted
    if fit.plot:
        after = [(r.confidence, r.exact_match) for r in results if r.prediction and r.confidence]
        curves = {f"temperature {reader.temperature:g}": tuple(zip(*before, strict=True))}
        if "temperature" in fitted:
            curves[f"fitted {fitted['temperature']:.3g}"] = tuple(zip(*after, strict=True))
        if before:
            reliability_plot(curves, Path(fit.plot), f"reliability: {Path(file).name}")
    if fit.save and fitted:
        from models.export import METADATA, save_reading

        if not (Path(model_path) / METADATA).is_file():
            raise EvaluationError("--save-fit needs --model to be an exported artifact")
        save_reading(Path(model_path), {k: v for k, v in fitted.items()
                                        if k in ("null_threshold", "temperature")})
    return report


def open_report(file: str, examples: list[SquadExample], target, *, k: int, ingest: bool,
                progress: bool, plot: str | None = None, asking: dict | None = None,
                use_cache: bool = True) -> EvalReport:
    """Open mode: (ingest the file, then) ask every question of the running system.
    ``asking``: Asker settings (retrieval_mode, min_rank_ratio, retrieval_weight,
    min_confidence: answers shown below it abstain, as the API's)."""
    from cluster.connection import connect
    from gears.asker import Asker

    client = connect(target)
    try:
        if ingest:
            ingest_file(client, file, progress=progress)
        asker = Asker(client, **(asking or {}), encoder_threads=QUESTION_THREADS)
        results = evaluate_open(client, examples, k=k, progress=progress, asker=asker,
                                use_cache=use_cache)
        described = pushed_model(client)
    finally:
        client.close()
    answered = [(r.confidence, r.exact_match) for r in results if r.prediction and r.confidence]
    if plot and answered:
        reliability_plot({"answers": tuple(zip(*answered, strict=True))}, Path(plot),
                         f"reliability (open mode): {Path(file).name}")
    return summarize(results, file=file, mode="open", model=described, k=k,
                     min_confidence=(asking or {}).get("min_confidence"))


@click.command("eval")
@click.argument("file", type=click.Path(dir_okay=False), required=False)
@click.option("--mode", type=click.Choice(["reader", "open"]), default="reader",
              show_default=True,
              help="reader: each question with its own paragraph; open: the full pipeline")
@click.option("--model", "model_path", default=None, type=click.Path(),
              help="reader mode: an exported artifact or a Hugging Face checkpoint folder "
                   "[default: the bundled reader]")
@click.option("--variant", type=click.Choice(ARTIFACT_VARIANTS), default="fp32",
              show_default=True, help="reader mode: which artifact variant to run")
@click.option("--max-seq-len", default=None, type=click.IntRange(16, 4096),
              help="reader mode: override the model's max_seq_len")
@click.option("--stride", default=DEFAULT_STRIDE, show_default=True, type=click.IntRange(0),
              help="reader mode: token overlap of a paragraph's windows (as the worker)")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="reader mode: torch threads")
@click.option("--no-ingest", is_flag=True,
              help="open mode: only ask, against whatever corpus is loaded")
@click.option("--k", default=DEFAULT_K, show_default=True, type=click.IntRange(1, MAX_K),
              help="open mode: passages read per question")
@click.option("--retrieval", "retrieval_mode", default=DEFAULT_MODE, show_default=True,
              type=click.Choice(MODES),
              help="open mode: hybrid (BM25 and dense fused where the cluster can) or bm25")
@click.option("--min-rank-ratio", default=None, type=click.FloatRange(0, 1),
              help="open mode: skip candidates below this share of the best retrieval score "
                   f"[default: {HYBRID_MIN_RANK_RATIO:g} hybrid, {MIN_RANK_RATIO:g} BM25]")
@click.option("--retrieval-weight", default=None, type=click.FloatRange(0),
              help="open mode: weight of the relative retrieval score in the answer score "
                   f"[default: {HYBRID_RETRIEVAL_WEIGHT:g} hybrid, {RETRIEVAL_WEIGHT:g} BM25]")
@click.option("--no-cache", is_flag=True,
              help="open mode: answer every question afresh (the cache is still written)")
@click.option("--limit", default=None, type=click.IntRange(1), help="first N questions only")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="also write the report (with every prediction) to this JSON file")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--fit-null-threshold", is_flag=True,
              help="reader mode, SQuAD 2.0 files: choose the no-answer threshold scoring the "
                   "best F1 here")
@click.option("--fit-temperature", is_flag=True,
              help="reader mode: fit the confidence temperature here (reports ECE before/after)")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=None,
              help="say 'no answer' below this confidence and report how many answered and "
                   "their EM/F1; reader mode: the reader's within-passage confidence (as "
                   "the export's setting), open mode: the confidence an answer shows (as "
                   "'serve --min-confidence') [default: off]")
@click.option("--reliability-plot", "plot", type=click.Path(dir_okay=False), default=None,
              help="write a reliability diagram (PNG) of the answers' confidences")
@click.option("--save-fit", is_flag=True,
              help="write what was fitted into the --model artifact (push it again)")
@target_options
def eval_command(file, mode, model_path, variant, max_seq_len, stride, threads, no_ingest, k,
                 retrieval_mode, min_rank_ratio, retrieval_weight, no_cache, limit, json_out,
                 quiet, fit_null_threshold, fit_temperature, min_confidence, plot, save_fit,
                 target):
    """Score a SQuAD-format FILE: EM/F1, recall@1/@5/@k, latency p50/p95/p99, cache hits.

    FILE defaults to the repository's SQuAD dev subset (data/squad/dev.json).
    """
    if file is None:
        file = datasets.shown(datasets.SQUAD_DEV)
        examples = read_squad(datasets.SQUAD_DEV)
    else:
        examples = read_squad(file)
    examples = examples[:limit] if limit else examples
    if not examples:
        raise EvaluationError(f"{file}: no questions")
    progress = not quiet and sys.stderr.isatty()
    if mode == "reader":
        if no_ingest:
            raise EvaluationError("--no-ingest is for --mode open")
        fit = ReaderFit(fit_null_threshold, fit_temperature, min_confidence, plot, save_fit)
        report = reader_report(file, examples, model_path, variant=variant,
                               max_seq_len=max_seq_len, stride=stride, threads=threads,
                               progress=progress, fit=fit)
    else:
        if fit_null_threshold or fit_temperature or save_fit:
            raise EvaluationError("--fit-* and --save-fit are for --mode reader (open mode "
                                  "reads with the pushed model's settings)")
        if model_path is not None:
            raise EvaluationError("--model is for --mode reader; open mode uses the model "
                                  "pushed to the cluster")
        asking = {"retrieval_mode": retrieval_mode, "min_rank_ratio": min_rank_ratio,
                  "retrieval_weight": retrieval_weight, "min_confidence": min_confidence}
        report = open_report(file, examples, target, k=k, ingest=not no_ingest,
                             progress=progress, plot=plot, asking=asking,
                             use_cache=not no_cache)
    console.print(render(report))
    if plot and Path(plot).is_file():
        console.print(f"reliability plot written to {plot}")
    if json_out:
        body = report.to_json()
        if mode == "open":  # the settings in effect (None: the mode's default)
            hybrid = retrieval_mode == "hybrid"
            body["asking"] = {**asking, "min_rank_ratio": HYBRID_MIN_RANK_RATIO if hybrid
                              else MIN_RANK_RATIO} if min_rank_ratio is None else dict(asking)
            rule = selection.default(retrieval_mode).with_weight(retrieval_weight)
            body["asking"]["retrieval_weight"] = rule.weight
            body["asking"]["selection"] = asdict(rule)  # the answer choice and confidence
        Path(json_out).write_text(json.dumps(body, indent=2, ensure_ascii=False)
                                  + "\n", encoding="utf-8")
        console.print(f"report written to {json_out}")
