"""``shardqa replay``: ask the question log's most asked questions again.

Real traffic as a benchmark or a regression check after a model or corpus change: the
questions come from the database of record (records/), most asked first, and go through
the same Asker as the API (as the ``api`` user), one at a time. Replays are not logged.
"""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.table import Table

from cluster.cli import target_options
from cluster.connection import connect
from cluster.errors import ShardqaError
from models.evaluation import percentiles
from records.schema import most_asked, open_engine

console = Console(highlight=False)


@click.command("replay")
@click.option("--db", "db_url", default=None, metavar="URL",
              help="the database of record [env SHARDQA_DB_URL; default: records.sqlite in "
                   "the cluster folder]")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1),
              help="how many distinct questions, most asked first")
@click.option("--k", default=5, show_default=True, type=click.IntRange(1, 50))
@click.option("--no-cache", is_flag=True, help="skip the answer cache (still writes it)")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 600))
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@target_options
def replay_command(db_url, limit, k, no_cache, timeout, as_json, target):
    """Ask the most asked questions of the log again; print answers and latency."""
    from sqlalchemy.exc import SQLAlchemyError

    from gears.asker import Asker
    from gears.retrieval import QUESTION_THREADS
    from records.settings import database_url

    client = connect(target.as_role("api"))
    engine = open_engine(database_url(db_url, target.directory))
    try:
        asked = most_asked(engine, limit)
    except SQLAlchemyError as exc:
        raise ShardqaError(f"cannot read the question log: {str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
    asker = Asker(client, timeout_s=timeout, encoder_threads=QUESTION_THREADS)
    results, latencies = [], []
    for question, times in asked:
        t0 = time.perf_counter()
        try:
            answer = asker.ask(question, k, use_cache=not no_cache)
        except ShardqaError as exc:
            results.append({"question": question, "asked": times, "error": str(exc)})
            continue
        latencies.append((time.perf_counter() - t0) * 1000)
        results.append({"question": question, "asked": times, "answer": answer.answer,
                        "score": answer.score, "cached": answer.cached})
    _print(results, percentiles(latencies), as_json)


def _print(results: list[dict], latency: dict, as_json: bool) -> None:
    summary = {"questions": len(results),
               "answered": sum(1 for r in results if r.get("answer")),
               "no_answer": sum(1 for r in results if "answer" in r and not r["answer"]),
               "errors": sum(1 for r in results if "error" in r), "latency_ms": latency}
    if as_json:
        click.echo(json.dumps({**summary, "results": results}, ensure_ascii=False))
        return
    table = Table("asked", "question", "answer", title="replay (most asked first)")
    for r in results:
        table.add_row(str(r["asked"]), r["question"],
                      r.get("answer") or f"[red]{r.get('error', 'no answer')}[/]")
    console.print(table)
    console.print(f"{summary['answered']} answered, {summary['no_answer']} without an answer, "
                  f"{summary['errors']} errors; latency ms {latency}")
