"""``shardqa eval``: SQuAD-format evaluation of the reader alone or of the whole pipeline.

``reader`` mode gives the reader each question with its own paragraph, through the same
runtime the workers use (``models.reader.Reader`` on passages tokenized by
``models.tokenization``), so the score is the reader's, not the retriever's. ``open`` mode
ingests the file's paragraphs into the running cluster and asks every question through the
full pipeline (cache, ranking, shard workers), reporting retrieval recall next to EM/F1.
Answers are deterministic for a given model; only the latencies vary between runs.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
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
from rich.table import Table

from cluster.cli import target_options
from cluster.errors import ShardqaError
from models.squad import SquadExample, read_squad, score_answer

console = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)

DEFAULT_STRIDE = 128  # the shard worker's window overlap (gears.worker.WorkerSettings.stride)


class EvaluationError(ShardqaError):
    """The evaluation cannot run as asked (bad model path, empty file, ...)."""

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


def summarize(results: list[QuestionResult], *, file: str, mode: str, model: str,
              k: int | None = None) -> EvalReport:
    """EM/F1 in percent, recall@1/@5/@k (open mode), latency percentiles, cache hit rate."""
    n = len(results)
    latencies = np.asarray([r.latency_ms for r in results], dtype=np.float64)
    latency = {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0}
    if n:
        latency = {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 95, 99)}
        latency["mean"] = float(latencies.mean())
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


def _run(examples: list[SquadExample], answer: Callable[[SquadExample], QuestionResult],
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


# --- reader mode ---------------------------------------------------------------------------

class _QAModule:
    """An eager Hugging Face QA model called like the exported TorchScript module."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids)
        return out.start_logits, out.end_logits


def load_reader(path: str | Path, *, variant: str = "fp32", max_seq_len: int | None = None,
                threads: int | None = None):
    """(Reader, description) from an exported artifact or a Hugging Face checkpoint folder.

    An artifact brings its own max_seq_len; a checkpoint folder is read in fp32 (also when
    stored in fp16) at ``max_seq_len`` (default 384, what ``shardqa model export`` uses).
    """
    import torch

    from models.export import MAX_QUESTION_TOKENS, METADATA, TOKENIZER, VARIANT_FILES
    from models.export import read_metadata as read_artifact_metadata
    from models.reader import Reader
    from models.tokenization import load_tokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise EvaluationError(f"--model {path}: no such folder")
    if (folder / METADATA).is_file():
        meta = read_artifact_metadata(folder)
        info = meta.get("variants", {}).get(variant)
        if info is None:
            raise EvaluationError(f"{path} has no {variant} variant (has "
                                  f"{', '.join(meta.get('variants', {})) or 'none'})")
        module = torch.jit.load(str(folder / info.get("file", VARIANT_FILES[variant])),
                                map_location="cpu")
        module.eval()
        tokenizer = load_tokenizer((folder / TOKENIZER).read_text(encoding="utf-8"))
        seq = int(max_seq_len or meta.get("max_seq_len", 384))
        reader = Reader(module, tokenizer, max_seq_len=seq,
                        max_question_tokens=int(meta.get("max_question_tokens",
                                                         MAX_QUESTION_TOKENS)),
                        threads=threads)
        return reader, f"{meta.get('name')} {meta.get('version')} {variant} (seq {seq})"
    if not (folder / "config.json").is_file():
        raise EvaluationError(f"--model {path}: neither a shardqa artifact ({METADATA}) nor a "
                              "Hugging Face checkpoint (config.json)")
    if variant != "fp32":
        raise EvaluationError("--variant int8 needs an exported artifact (shardqa model export "
                              "--int8)")
    if not (folder / "tokenizer.json").is_file():
        raise EvaluationError(f"{path} has no tokenizer.json (a fast tokenizer is needed)")
    from transformers import AutoModelForQuestionAnswering
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForQuestionAnswering.from_pretrained(str(folder), local_files_only=True,
                                                              dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise EvaluationError(f"cannot load a QA model from {path}: "
                              f"{str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    model.eval()
    tokenizer = load_tokenizer((folder / "tokenizer.json").read_text(encoding="utf-8"))
    seq = int(max_seq_len or 384)
    reader = Reader(_QAModule(model), tokenizer, max_seq_len=seq,
                    max_question_tokens=MAX_QUESTION_TOKENS, threads=threads)
    return reader, f"{folder.name} (checkpoint, eager fp32, seq {seq})"


def evaluate_reader(examples: list[SquadExample], reader, *, stride: int = DEFAULT_STRIDE,
                    progress: bool = True) -> list[QuestionResult]:
    """Each question read against its own paragraph only (tokenized once per paragraph)."""
    from models.tokenization import tokenize_passages, window_token_budget

    window = window_token_budget(reader.max_seq_len, reader.max_question_tokens)
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

    return _run(examples, answer, progress, "reading")


# --- open mode -----------------------------------------------------------------------------

def ingest_file(client, path: str, progress: bool = True):
    """Every paragraph of the SQuAD file into the cluster, then wait for the workers."""
    from loaders.documents import read_documents
    from loaders.writer import ingest, wait_indexed

    report = ingest(client, read_documents([path], "squad"), source=path, progress=progress)
    wait_indexed(client, progress=progress)
    return report


def evaluate_open(client, examples: list[SquadExample], *, k: int = 5, asker=None,
                  progress: bool = True) -> list[QuestionResult]:
    """Ask every question through the pipeline; the gold passage is paragraph i of article T."""
    from cluster.partitions import passage_id
    from gears.asker import Asker

    asker = asker or Asker(client)

    def answer(example: SquadExample) -> QuestionResult:
        gold = passage_id(example.title, example.paragraph_index)
        t0 = time.perf_counter()
        try:
            got = asker.ask(example.question, k=k)
        except ShardqaError as exc:
            latency = (time.perf_counter() - t0) * 1000
            return QuestionResult(example.id, "", 0.0, 0.0, latency, error=str(exc))
        latency = float((got.timings_ms or {}).get("total", (time.perf_counter() - t0) * 1000))
        text = got.answer or ""
        em, f1 = score_answer(text, example.answers)
        read = list(got.passages_read or [])
        rank = read.index(gold) + 1 if gold in read else None
        return QuestionResult(example.id, text, em, f1, latency, cached=bool(got.cached),
                              gold_rank=rank)

    return _run(examples, answer, progress, "asking")


# --- output --------------------------------------------------------------------------------

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
    if report.errors:
        table.add_row("errors", str(report.errors))
    return table


def _limit(examples: Iterable[SquadExample], limit: int | None) -> list[SquadExample]:
    examples = list(examples)
    return examples[:limit] if limit else examples


@click.command("eval")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--mode", type=click.Choice(["reader", "open"]), default="reader",
              show_default=True,
              help="reader: each question with its own paragraph; open: the full pipeline")
@click.option("--model", "model_path", default=None, type=click.Path(),
              help="reader mode: an exported artifact or a Hugging Face checkpoint folder "
                   "[default: the bundled reader]")
@click.option("--variant", type=click.Choice(["fp32", "int8"]), default="fp32",
              show_default=True, help="reader mode: which artifact variant to run")
@click.option("--max-seq-len", default=None, type=click.IntRange(16, 4096),
              help="reader mode: override the model's max_seq_len")
@click.option("--stride", default=DEFAULT_STRIDE, show_default=True, type=click.IntRange(0),
              help="reader mode: token overlap of a paragraph's windows (as the worker)")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="reader mode: torch threads")
@click.option("--no-ingest", is_flag=True,
              help="open mode: only ask, against whatever corpus is loaded")
@click.option("--k", default=5, show_default=True, type=click.IntRange(1, 50),
              help="open mode: passages read per question")
@click.option("--limit", default=None, type=click.IntRange(1), help="first N questions only")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="also write the report (with every prediction) to this JSON file")
@click.option("--quiet", is_flag=True, help="no progress bars")
@target_options
def eval_command(file, mode, model_path, variant, max_seq_len, stride, threads, no_ingest, k,
                 limit, json_out, quiet, target):
    """Score a SQuAD-format FILE: EM/F1, recall@1/@5/@k, latency p50/p95/p99, cache hits."""
    examples = _limit(read_squad(file), limit)
    if not examples:
        raise EvaluationError(f"{file}: no questions")
    progress = not quiet and sys.stderr.isatty()
    if mode == "reader":
        if no_ingest:
            raise EvaluationError("--no-ingest is for --mode open")
        if model_path is None:
            from models.default import default_artifact

            model_path = str(default_artifact())
        reader, described = load_reader(model_path, variant=variant, max_seq_len=max_seq_len,
                                        threads=threads)
        reader.warm_up()
        results = evaluate_reader(examples, reader, stride=stride, progress=progress)
        report = summarize(results, file=file, mode=mode, model=described)
    else:
        if model_path is not None:
            raise EvaluationError("--model is for --mode reader; open mode uses the model "
                                  "pushed to the cluster")
        from cluster.connection import connect

        client = connect(target)
        try:
            if not no_ingest:
                ingest_file(client, file, progress=progress)
            results = evaluate_open(client, examples, k=k, progress=progress)
            described = _pushed_model(client)
        finally:
            client.close()
        report = summarize(results, file=file, mode=mode, model=described, k=k)
    console.print(render(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False)
                                  + "\n", encoding="utf-8")
        console.print(f"report written to {json_out}")


def _pushed_model(client) -> str:
    """Name and version of the model current on the masters, for the report."""
    try:
        from models import store

        rows = [r for r in store.list_models(client)
                if r.get("current_on") and r.get("kind", "reader") == "reader"]
    except Exception:  # noqa: BLE001 - the report still stands without the model's name
        return "pushed model"
    return ", ".join(f"{r['name']} {r['version']} {r['variant']}" for r in rows) or "none"
