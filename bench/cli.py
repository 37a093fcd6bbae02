"""``shardqa bench``: the whole performance picture in one command."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from bench import ON_REQUEST, PHASES

console = Console(highlight=False)


class _Bar:
    """tqdm on a terminal, silent otherwise (logs stay readable)."""

    def __init__(self, total: int, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=f"  {desc}", leave=False, file=sys.stderr,
                        disable=not sys.stderr.isatty())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
        return False

    def update(self, n: int = 1) -> None:
        self.bar.update(n)


@click.command("bench")
@click.option("--quick", is_flag=True, help="small counts and corpora: a few minutes")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON result [default: bench/results/DATE.json (+ .md and PNGs beside it)]")
@click.option("--model", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="exported reader artifact [default: the bundled trained "
              "reader, else the MiniLM encoder (speed figures only)]")
@click.option("--dev", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="SQuAD v1.1 questions and paragraphs "
              "[default: data/squad/dev.json]")
@click.option("--masters", type=click.IntRange(1, 16), default=2, show_default=True,
              help="masters of the bench cluster (one worker each)")
@click.option("--worker-threads", type=click.IntRange(1, 64), default=None,
              help="torch threads per worker [default: cores]")
@click.option("--only", default=None, metavar="PHASE,...",
              help="run only these phases: " + ", ".join(PHASES) + " [default: all but "
              + ", ".join(ON_REQUEST) + "]")
@click.option("--port-base", type=click.IntRange(1024, 55000), default=None,
              help="first port of the bench cluster's nodes [default: free ports]")
@click.option("--api-port", type=click.IntRange(1024, 65535), default=None,
              help="port of the bench API [default: a free port]")
def bench_command(quick, out, model, dev, masters, worker_threads, only, port_base, api_port):
    """Measure shardqa beside its baselines (naive eager HF, the-pattern style) and peers
    (shardqa in one process; Haystack with the peer extra) on this machine: latency,
    throughput, cache, ingest, rank at scale, reader GFLOP/s, quality per option, the CPU
    budget of a question. Starts and stops its own cluster, workers and APIs on free ports.
    ``--only chaos``: the faults of a running stack under load (3 masters with a replica
    each, whatever --masters says), written to bench/results/chaos-DATE.json."""
    from transformers.utils import logging as hf_logging

    from bench import report
    from bench.run import Bench, BenchSettings

    hf_logging.set_verbosity_error()  # the load report of a QA head on an encoder, every time
    hf_logging.disable_progress_bar()  # "Loading weights" when Haystack loads its reader

    phases = tuple(p.strip() for p in (only or "").split(",") if p.strip())
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise click.BadParameter(f"unknown phase(s) {', '.join(unknown)}; choose from "
                                 f"{', '.join(PHASES)}", param_hint="--only")
    if "chaos" in phases:
        phases = tuple(p for p in phases if p != "chaos")
        chaos(quick, model, dev, out if not phases else None)
        if not phases:
            return
    settings = BenchSettings.for_run(quick, dev=dev, model=model, masters=masters,
                                     worker_threads=worker_threads, only=phases or None,
                                     port_base=port_base, api_port=api_port)
    if out is None:
        stamp = time.strftime("%Y-%m-%d-%H%M", time.gmtime())
        out = Path("bench/results") / f"{stamp}{'-quick' if quick else ''}.json"
    result = Bench(settings, say=lambda msg: console.print(msg, markup=False),
                   bar=_Bar, interactive=sys.stderr.isatty()).run()
    for path in report.write(result, out):
        console.print(f"wrote {path}")
    if "cpu_budget" in result:
        # named after the run's file, so two runs on one day do not overwrite each other
        budget = out.with_name(f"cpu-budget-{out.stem}.json")
        budget.write_text(json.dumps({"started": result["started"], "machine": result["machine"],
                                      **result["cpu_budget"]}, indent=2) + "\n")
        console.print(f"wrote {budget}")
    if "scale_model" in result:
        scale = out.with_name(f"scale-model-{out.stem}.json")
        scale.write_text(json.dumps({"started": result["started"], "machine": result["machine"],
                                     "command": "shardqa bench --only scale"
                                     + (" --quick" if quick else ""),
                                     **result["scale_model"]}, indent=2) + "\n")
        console.print(f"wrote {scale}")
    for g in result.get("goals", []):
        mark = {True: "[green]reached[/]", False: "[red]not reached[/]", None: "-"}[g["reached"]]
        console.print(f"{g['goal']}: {g['measured']} {g['unit']} (goal {g['target']}) {mark}")


def chaos(quick: bool, model: Path | None, dev: Path | None, out: Path | None) -> None:
    """The chaos run (bench/chaos.py) with the bench's reader, dev questions and corpus."""
    import json
    import os
    import tempfile

    from bench import corpus
    from bench.chaos import ChaosSettings, run_chaos
    from bench.run import machine, resolve_artifact
    from models.export import read_metadata

    def say(msg: str) -> None:
        console.print(msg, markup=False)

    settings = ChaosSettings.for_run(quick)
    artifact = resolve_artifact(model, say)
    dev = dev or corpus.DEV
    questions = [q.question for q in corpus.dev_questions(dev)]
    documents = corpus.dev_documents(dev) + corpus.distractors(settings.distractor_docs)
    host = machine()
    with tempfile.TemporaryDirectory(prefix="shardqa-chaos-") as work:
        result = run_chaos(settings, artifact, documents, questions, Path(work), say)
    host["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"] = host
    result["command"] = "shardqa bench --only chaos" + (" --quick" if quick else "")
    result["reader_artifact"] = f"{read_metadata(artifact)['name']} ({artifact.name}, fp32)"
    out = out or Path("bench/results") / f"chaos-{time.strftime('%Y-%m-%d', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    console.print(f"wrote {out}")
    for row in result["faults"]:
        console.print(f"{row['fault']}: {row['requests']} requests, {row['errors']} errors "
                      f"{row['errors_by_reason'] or ''}, {row['wrong']} wrong, "
                      f"{row['partial']} partial; recovered in {row.get('recovered_s', '-')} s",
                      markup=False)
    for g in result["goals"]:
        console.print(f"{g['goal']}: {g['measured']} {g['unit']} (goal {g['target']}) "
                      f"{'reached' if g['reached'] else 'NOT reached'}", markup=False)
