"""``shardqa bench``: the whole performance picture in one command."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from bench import PHASES

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
              help="run only these phases: " + ", ".join(PHASES) + " [default: all]")
@click.option("--port-base", type=click.IntRange(1024, 55000), default=None,
              help="first port of the bench cluster's nodes [default: free ports]")
@click.option("--api-port", type=click.IntRange(1024, 65535), default=None,
              help="port of the bench API [default: a free port]")
def bench_command(quick, out, model, dev, masters, worker_threads, only, port_base, api_port):
    """Measure shardqa and its baselines (naive eager HF, the-pattern style) on this machine:
    latency, throughput, cache, ingest, rank at scale, reader GFLOP/s, quality per option.
    Starts and stops its own cluster, workers and API on free ports."""
    from transformers.utils import logging as hf_logging

    from bench import report
    from bench.run import Bench, BenchSettings

    hf_logging.set_verbosity_error()  # the load report of a QA head on an encoder, every time

    phases = tuple(p.strip() for p in (only or "").split(",") if p.strip())
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise click.BadParameter(f"unknown phase(s) {', '.join(unknown)}; choose from "
                                 f"{', '.join(PHASES)}", param_hint="--only")
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
        budget = out.with_name(f"cpu-budget-{time.strftime('%Y-%m-%d', time.gmtime())}.json")
        budget.write_text(json.dumps({"started": result["started"], "machine": result["machine"],
                                      **result["cpu_budget"]}, indent=2) + "\n")
        console.print(f"wrote {budget}")
    for g in result.get("goals", []):
        mark = {True: "[green]reached[/]", False: "[red]not reached[/]", None: "-"}[g["reached"]]
        console.print(f"{g['goal']}: {g['measured']} {g['unit']} (goal {g['target']}) {mark}")
