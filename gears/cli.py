"""``shardqa worker``, ``shardqa status`` and ``shardqa reembed`` (``shardqa ask`` is
shardqa.ask)."""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster import keys
from cluster.connection import connect
from cluster.options import log_level_option, start_logging, target_options
from cluster.waiting import Deadline
from gears.health import served_partitions, status
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
@click.option("--embed-batch", default=DEFAULTS.embed_batch, show_default=True,
              type=click.IntRange(1, 1024), envvar="SHARDQA_EMBED_BATCH",
              help="passages per forward pass of the passage encoder")
@click.option("--embed-max-tokens", default=DEFAULTS.embed_max_tokens or 0, show_default=True,
              type=click.IntRange(0, 4096), envvar="SHARDQA_EMBED_MAX_TOKENS",
              help="cut passages at this many tokens before embedding (0: the encoder's own "
                   "max_seq_len)")
@click.option("--reembed-batch", default=DEFAULTS.reembed_batch, show_default=True,
              type=click.IntRange(1, 10_000), envvar="SHARDQA_REEMBED_BATCH",
              help="passages a re-embed step embeds (after a new encoder is pushed) before "
                   "the worker looks at questions again")
@click.option("--threads", default=DEFAULTS.threads, type=click.IntRange(1, 256),
              envvar="SHARDQA_THREADS", help="torch threads for the reader [default: torch's]")
@click.option("--max-deliveries", default=DEFAULTS.max_deliveries, show_default=True,
              type=click.IntRange(1, 1000), envvar="SHARDQA_MAX_DELIVERIES",
              help="an entry delivered this often without being acknowledged is moved to its "
                   "partition's dead-letter stream")
@click.option("--keymiss-rate", default=DEFAULTS.keymiss_rate, show_default=True,
              type=click.FloatRange(0), envvar="SHARDQA_KEYMISS_RATE",
              help="new answers a second for redis-cli GETs that missed (key misses); misses "
                   "over it are dropped and counted; 0: never answer key misses")
@click.option("--keymiss-burst", default=DEFAULTS.keymiss_burst, show_default=True,
              type=click.IntRange(1, 10_000), envvar="SHARDQA_KEYMISS_BURST",
              help="key misses answered at once after a quiet spell")
@log_level_option
@target_options
def worker_command(master, cluster_url, max_batch, max_wait_ms, max_batch_pairs, ingest_batch,
                   embed_batch, embed_max_tokens, reembed_batch, threads, max_deliveries,
                   keymiss_rate, keymiss_burst, log_level, target):
    """Run the shard worker beside one master (one per master)."""
    from cluster.connection import Target
    from gears.worker import ShardWorker

    start_logging(log_level)
    if cluster_url:
        url = cluster_url if "://" in cluster_url else f"redis://{cluster_url}"
        target = Target(url=url, directory=target.directory)
    settings = WorkerSettings(max_batch=max_batch, max_wait_ms=max_wait_ms,
                              max_batch_pairs=max_batch_pairs, ingest_batch=ingest_batch,
                              embed_batch=embed_batch, embed_max_tokens=embed_max_tokens or None,
                              reembed_batch=reembed_batch, threads=threads,
                              max_deliveries=max_deliveries,
                              keymiss_rate=keymiss_rate, keymiss_burst=keymiss_burst)
    ShardWorker(target, master, settings).run()


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@target_options
def status_command(as_json, target):
    """Per partition: passages, index terms, pending entries; per worker: heartbeat and lag."""
    client = connect(target)
    report = status(client)
    report["supervised"] = supervised(client)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    behind = set(report["reembed"]["partitions"])
    table = Table("partition", "master", "passages", "windows", "terms", "vectors", "re-embed",
                  "ingest pending", "requests pending", title=f"generation {report['generation']}")
    for p in report["partitions"]:
        table.add_row(str(p["partition"]), p["master"], str(p["passages"]), str(p["windows"]),
                      str(p["terms"]), str(p["vectors"]),
                      reembed_cell(p, p["partition"] in behind),
                      str(p["ingest_pending"]), str(p["requests_pending"]))
    console.print(table)
    wt = Table("worker", "partitions", "heartbeat age (s)", "lag", "requests", "batches",
               "ingested", "errors", "dead letters", "key misses (answered/dropped)",
               "model")
    for w in report["workers"]:
        wt.add_row(w["id"], ",".join(map(str, w["partitions"])), f"{w['age_s']:.1f}",
                   str(w["lag"]),
                   str(w["requests"]), str(w["batches"]), str(w["ingested"]), str(w["errors"]),
                   str(w.get("dead", 0)),
                   f"{w.get('keymiss', 0)}/{w.get('keymiss_dropped', 0)}",
                   str(w.get("model") or w.get("no_reader")))
    console.print(wt)
    if report["supervised"]:
        st = Table("process", "pid", "restarts", "last exit", title="supervised (shardqa up)")
        for name, child in sorted(report["supervised"].items()):
            st.add_row(child.get("label") or name, str(child.get("pid") or "-"),
                       str(child.get("restarts", 0)),
                       "-" if child.get("last_exit") is None else str(child["last_exit"]))
        console.print(st)
    for node, mem in report["memory"].items():
        console.print(f"{node}: {mem}")
    console.print(retrieval_line(report["retrieval"]))
    if report["retrieval"]["vector_sets"] and behind:
        console.print(reembed_line(report["reembed"]))


def retrieval_line(r: dict) -> str:
    """``shardqa status``'s one line on how questions are ranked."""
    if r["mode"] == "hybrid":
        return f"retrieval: hybrid (BM25 + dense, encoder {r['encoder']})"
    why = ("the cluster has no vector sets (Redis < 8 or Valkey)" if not r["vector_sets"]
           else "no passage encoder pushed ('shardqa model push ENCODER')" if not r["encoder"]
           else "some partitions have no vectors yet ('shardqa reembed' follows them)")
    return f"retrieval: BM25 only: {why}"


def reembed_cell(row: dict, behind: bool) -> str:
    """A partition's re-embed: "-" (its vectors are the current encoder's), "37/120"
    (vectors in the set being built / passages), or "waiting" (no worker has started)."""
    if not behind:
        return "-"
    if row["reembed"] is None:
        return "waiting"
    return f"{min(row['reembed']['done'], row['passages'])}/{row['passages']}"


def reembed_line(progress: dict) -> str:
    """One line on the partitions whose vectors are not yet the current encoder's."""
    return (f"re-embedding {len(progress['partitions'])} partition(s) with encoder "
            f"{progress['encoder']}: {progress['done']}/{progress['total']} passages "
            "(questions use the vectors each partition has until its new set is complete)")


@click.command("reembed")
@click.option("--timeout", default=3600.0, show_default=True, type=click.FloatRange(0),
              help="give up (exit 1) after this many seconds")
@click.option("--no-wait", is_flag=True, help="print the progress once and return")
@target_options
def reembed_command(timeout, no_wait, target):
    """Follow the shard workers re-embedding the passages with the current passage encoder
    (after 'shardqa model push ENCODER'), with a progress bar, until every partition's
    vectors are made by it."""
    from cluster.errors import ShardqaError

    with connect(target) as client:
        report = status(client)
        if not report["retrieval"]["vector_sets"]:
            raise ShardqaError("the cluster has no vector sets (Redis < 8 or Valkey): "
                               "nothing is embedded")
        if report["reembed"]["encoder"] is None:
            raise ShardqaError("no passage encoder pushed: run 'shardqa model push ENCODER'")
        if no_wait:
            progress = report["reembed"]
            console.print(reembed_line(progress) if progress["partitions"] else
                          f"every partition's vectors are made by {progress['encoder']}")
            return
        follow(client, Deadline(timeout))


def follow_embedding(client, timeout: float = 1800) -> bool:
    """After an ingest: follow the re-embed until every partition's vectors are the current
    encoder's, where the cluster embeds at all (vector sets and an encoder pushed). The
    ingest entries ``wait_indexed`` counts only cover what the ingest wrote: a corpus already
    stored before the encoder was pushed (re-ingested unchanged) or after a new encoder is
    embedded by the workers' re-embed job, partition by partition, and asking before it ends
    ranks those partitions by BM25 alone. Returns whether it had to wait."""
    report = status(client)
    progress = report["reembed"]
    if not (report["retrieval"]["vector_sets"] and progress["encoder"]
            and progress["partitions"]):
        return False
    console.print(reembed_line(progress))
    follow(client, Deadline(timeout))
    return True


def follow(client, deadline: Deadline) -> None:
    """A progress bar of the passages embedded with the current encoder, until every
    partition's vectors are its; at the deadline, one line naming the partitions behind
    (and those no live worker serves) and exit code 1."""
    from cluster.errors import ShardqaError

    report = status(client)
    encoder = report["reembed"]["encoder"]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"re-embedding with {encoder}", total=None)
        while report["reembed"]["partitions"]:
            progress = report["reembed"]
            bar.update(task, total=max(1, progress["total"]), completed=progress["done"])
            if deadline.left() <= 0:
                served = served_partitions(client)
                orphans = [i for i in progress["partitions"] if i not in served]
                raise ShardqaError(
                    f"re-embedding not finished: partitions {progress['partitions']} "
                    f"({progress['done']}/{progress['total']} passages)"
                    + (f"; no live worker serves {orphans}" if orphans else ""))
            time.sleep(0.5)
            report = status(client)
            if report["reembed"]["encoder"] != encoder:
                encoder = report["reembed"]["encoder"]
                bar.update(task, description=f"re-embedding with {encoder}")
    total = report["reembed"]["total"]
    console.print(f"every partition's vectors are made by {encoder} ({total} passages)")


def supervised(client) -> dict[str, dict]:
    """What the local stack's supervisor reports about its children (empty without one)."""
    out = {}
    for name, raw in client.hgetall(keys.supervised()).items():
        try:
            out[name.decode() if isinstance(name, bytes) else name] = json.loads(raw)
        except ValueError:
            continue
    return out

