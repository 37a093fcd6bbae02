"""``shardqa worker``, ``shardqa ask`` and ``shardqa status``."""

from __future__ import annotations

import json
import logging

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cluster.cli import target_options
from cluster.connection import connect
from gears.health import status
from gears.settings import DEFAULTS, WorkerSettings

console = Console(highlight=False)


@click.command("worker")
@click.option("--master", required=True, envvar="SHARDQA_MASTER", metavar="HOST:PORT",
              help="the master this worker runs beside [env SHARDQA_MASTER]")
@click.option("--cluster", "cluster_url", default=None, metavar="HOST:PORT",
              help="any node of a cluster on another host (same as --redis redis://HOST:PORT)")
@click.option("--max-batch", default=DEFAULTS.max_batch, show_default=True,
              type=click.IntRange(1, 1024), envvar="SHARDQA_MAX_BATCH",
              help="requests per batch (BATCHSIZE)")
@click.option("--max-wait-ms", default=DEFAULTS.max_wait_ms, show_default=True,
              type=click.FloatRange(0, 1000), envvar="SHARDQA_MAX_WAIT_MS",
              help="wait for a fuller batch (MINBATCHTIMEOUT)")
@click.option("--max-batch-pairs", default=DEFAULTS.max_batch_pairs, show_default=True,
              type=click.IntRange(1, 1024), envvar="SHARDQA_MAX_BATCH_PAIRS",
              help="question/window pairs per forward pass; a batch's requests are read and "
                   "answered in groups of this size")
@click.option("--ingest-batch", default=DEFAULTS.ingest_batch, show_default=True,
              type=click.IntRange(1, 10_000), envvar="SHARDQA_INGEST_BATCH",
              help="ingest entries per partition per indexing step (one MULTI each)")
@click.option("--threads", default=DEFAULTS.threads, type=click.IntRange(1, 256),
              envvar="SHARDQA_THREADS", help="torch threads for the reader [default: torch's]")
@click.option("--max-deliveries", default=DEFAULTS.max_deliveries, show_default=True,
              type=click.IntRange(1, 1000), envvar="SHARDQA_MAX_DELIVERIES",
              help="an entry delivered this often without being acknowledged is moved to its "
                   "partition's dead-letter stream")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@target_options
def worker_command(master, cluster_url, max_batch, max_wait_ms, max_batch_pairs, ingest_batch,
                   threads, max_deliveries, log_level, target):
    """Run the shard worker beside one master (one per master)."""
    from cluster.connection import Target
    from gears.worker import ShardWorker

    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if cluster_url:
        url = cluster_url if "://" in cluster_url else f"redis://{cluster_url}"
        target = Target(url=url, directory=target.directory)
    settings = WorkerSettings(max_batch=max_batch, max_wait_ms=max_wait_ms,
                              max_batch_pairs=max_batch_pairs, ingest_batch=ingest_batch,
                              threads=threads, max_deliveries=max_deliveries)
    ShardWorker(target, master, settings).run()


@click.command("ask")
@click.argument("question")
@click.option("--k", default=5, show_default=True, type=click.IntRange(1, 50))
@click.option("--json", "as_json", is_flag=True, help="print the answer as JSON")
@click.option("--no-cache", is_flag=True, help="skip the answer cache (still writes it)")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 600))
@target_options
def ask_command(question, k, as_json, no_cache, timeout, target):
    """Ask a question of the corpus in the cluster."""
    from gears.asker import Asker

    client = connect(target)
    answer = Asker(client, timeout_s=timeout).ask(question, k, use_cache=not no_cache)
    if as_json:
        click.echo(json.dumps(answer.public(), ensure_ascii=False))
        return
    if answer.answer is None:
        console.print("[yellow]no answer:[/] no passage in the corpus matches this question")
    else:
        console.print(f"[bold green]{answer.answer}[/]  (score {answer.score:.2f})")
        console.print(f"[dim]from[/] {answer.title or '?'} [dim]({answer.passage_id})[/]")
        text = answer.passage_text or ""
        lo, hi = answer.start, answer.end
        ctx_lo, ctx_hi = max(0, lo - 240), min(len(text), hi + 240)
        snippet = Text(("…" if ctx_lo else "") + text[ctx_lo:lo])
        snippet.append(text[lo:hi], style="bold reverse")
        snippet.append(text[hi:ctx_hi] + ("…" if ctx_hi < len(text) else ""))
        console.print(snippet)
    timing = ", ".join(f"{name} {ms:.1f} ms" for name, ms in answer.timings_ms.items())
    console.print(f"[dim]{'cache hit' if answer.cached else 'cache miss'}; {timing}[/]")


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@target_options
def status_command(as_json, target):
    """Per partition: passages, index terms, pending entries; per worker: heartbeat and lag."""
    client = connect(target)
    report = status(client)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    table = Table("partition", "master", "passages", "windows", "terms", "ingest pending",
                  "requests pending", title=f"generation {report['generation']}")
    for p in report["partitions"]:
        table.add_row(str(p["partition"]), p["master"], str(p["passages"]), str(p["windows"]),
                      str(p["terms"]),
                      str(p["ingest_pending"]), str(p["requests_pending"]))
    console.print(table)
    wt = Table("worker", "partitions", "heartbeat age (s)", "lag", "requests", "batches",
               "ingested", "errors", "dead letters", "model")
    for w in report["workers"]:
        wt.add_row(w["id"], ",".join(map(str, w["partitions"])), f"{w['age_s']:.1f}",
                   str(w["lag"]),
                   str(w["requests"]), str(w["batches"]), str(w["ingested"]), str(w["errors"]),
                   str(w.get("dead", 0)), str(w.get("model") or w.get("no_reader")))
    console.print(wt)
    for node, mem in report["memory"].items():
        console.print(f"{node}: {mem}")


def register(cli: click.Group) -> None:
    cli.add_command(worker_command)
    cli.add_command(ask_command)
    cli.add_command(status_command)
    try:
        from gears.evaluation import eval_command
    except ImportError:
        pass
    else:
        cli.add_command(eval_command)
