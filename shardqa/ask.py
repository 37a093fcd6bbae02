"""``shardqa ask``: one question from the terminal, through the Python API (shardqa.client)."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.text import Text

from cluster.options import target_options
from gears.asker import ASK_TIMEOUT_S, DEFAULT_K, MAX_K
from shardqa.client import Answer, Client

console = Console(highlight=False)
#: characters of the passage shown either side of the answer
CONTEXT_CHARS = 240


@click.command("ask")
@click.argument("question")
@click.option("--k", default=DEFAULT_K, show_default=True, type=click.IntRange(1, MAX_K),
              help="passages read per question")
@click.option("--json", "as_json", is_flag=True, help="print the answer as JSON")
@click.option("--no-cache", is_flag=True, help="skip the answer cache (still writes it)")
@click.option("--timeout", default=ASK_TIMEOUT_S, show_default=True,
              type=click.FloatRange(0.1, 600), help="seconds to wait for shard workers")
@target_options
def ask_command(question, k, as_json, no_cache, timeout, target):
    """Ask a question of the corpus in the cluster."""
    with Client(target, timeout=timeout) as qa:
        answer = qa.ask(question, k, use_cache=not no_cache)
    if as_json:
        click.echo(json.dumps(answer.to_dict(), ensure_ascii=False))
        return
    show(answer)


def show(answer: Answer) -> None:
    if answer.answer is None or answer.passage is None:
        reason = answer.reason or "no passage in the corpus matches this question"
        console.print(f"[yellow]no answer:[/] {reason}")
    else:
        confidence = answer.confidence
        sure = f", confidence {confidence:.0%}" if confidence is not None else ""
        console.print(f"[bold green]{answer.answer}[/]  (score {answer.score:.2f}{sure})")
        console.print(f"[dim]from[/] {answer.passage.title or '?'} [dim]({answer.passage.id})[/]")
        text = answer.passage.text or ""
        lo, hi = answer.start, answer.end
        ctx_lo, ctx_hi = max(0, lo - CONTEXT_CHARS), min(len(text), hi + CONTEXT_CHARS)
        snippet = Text(("…" if ctx_lo else "") + text[ctx_lo:lo])
        snippet.append(text[lo:hi], style="bold reverse")
        snippet.append(text[hi:ctx_hi] + ("…" if ctx_hi < len(text) else ""))
        console.print(snippet)
    line = retrieval_line(answer.extra.get("retrieval"))
    if line:
        console.print(f"[dim]{line}[/]")
    timing = ", ".join(f"{name} {ms:.1f} ms" for name, ms in answer.timings.items())
    console.print(f"[dim]{'cache hit' if answer.cached else 'cache miss'}; {timing}[/]")



def found_by(retrieval: dict | None) -> str:
    """"BM25 #2, dense #1" (hybrid) or "BM25 #1" (BM25 alone) for the answer's passage;
    "not found" where a retriever did not find it."""
    if not retrieval:
        return "-"
    names = ("bm25", "dense") if retrieval.get("mode") == "hybrid" else ("bm25",)
    return ", ".join(f"{'BM25' if n == 'bm25' else n} "
                     + (f"#{retrieval[n]}" if retrieval.get(n) else "not found") for n in names)


def retrieval_line(retrieval: dict | None) -> str:
    """How the answer's passage was found: "hybrid retrieval: BM25 #2, dense #1"."""
    if not retrieval:
        return ""
    mode = "hybrid retrieval" if retrieval.get("mode") == "hybrid" else "BM25 only"
    return f"{mode}: {found_by(retrieval)}"
