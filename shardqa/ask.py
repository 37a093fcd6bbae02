"""``shardqa ask``: one question from the terminal, through the Python API (shardqa.client)."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from api.cli import min_confidence_option
from cluster.options import target_options
from gears.asker import ASK_TIMEOUT_S, DEFAULT_K, DEFAULT_N, MAX_K, MAX_N, QuestionError
from shardqa.client import Answer, AnswerSpan, Client

console = Console(highlight=False)
#: characters of the passage shown either side of the answer
CONTEXT_CHARS = 240
#: ... and either side of each further answer
MORE_CONTEXT_CHARS = 60


class Count(click.ParamType):
    """An integer option from 1 to ``most``; a bad value is one line and exit code 2, as
    the asker says it (click's own message would add its usage block)."""

    name = "integer"

    def __init__(self, option: str, most: int):
        self.option, self.most = option, most

    def convert(self, value, param, ctx) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if not 1 <= number <= self.most:
            raise QuestionError(f"{self.option} must be an integer from 1 to {self.most}")
        return number

    def get_metavar(self, param, ctx=None) -> str:
        return f"[1-{self.most}]"


@click.command("ask")
@click.argument("question")
@click.option("--k", default=DEFAULT_K, show_default=True, type=Count("k", MAX_K),
              help="passages read per question")
@click.option("--n", default=DEFAULT_N, show_default=True, type=Count("n", MAX_N),
              help="distinct answers shown, best first")
@click.option("--json", "as_json", is_flag=True, help="print the answer as JSON")
@click.option("--no-cache", is_flag=True, help="skip the answer cache (still writes it)")
@click.option("--timeout", default=ASK_TIMEOUT_S, show_default=True,
              type=click.FloatRange(0.1, 600), help="seconds to wait for shard workers")
@min_confidence_option
@target_options
def ask_command(question, k, n, as_json, no_cache, timeout, min_confidence, target):
    """Ask a question of the corpus in the cluster."""
    with Client(target, timeout=timeout, min_confidence=min_confidence) as qa:
        answer = qa.ask(question, k, n, use_cache=not no_cache)
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
        console.print(snippet(answer.passage.text, answer.start, answer.end, CONTEXT_CHARS))
    show_more(answer.answers[1:])
    line = retrieval_line(answer.extra.get("retrieval"))
    if line:
        console.print(f"[dim]{line}[/]")
    timing = ", ".join(f"{name} {ms:.1f} ms" for name, ms in answer.timings.items())
    console.print(f"[dim]{'cache hit' if answer.cached else 'cache miss'}; {timing}[/]")


def snippet(text: str | None, lo: int, hi: int, around: int) -> Text:
    """The passage around [lo, hi), that span highlighted."""
    text = text or ""
    ctx_lo, ctx_hi = max(0, lo - around), min(len(text), hi + around)
    shown = Text(("…" if ctx_lo else "") + text[ctx_lo:lo])
    shown.append(text[lo:hi], style="bold reverse")
    shown.append(text[hi:ctx_hi] + ("…" if ctx_hi < len(text) else ""))
    return shown


def show_more(others: tuple[AnswerSpan, ...] | list[AnswerSpan]) -> None:
    """The next distinct answers (``--n``), numbered after the best: "2. ...", "3. ..."."""
    if not others:
        return
    console.print("[dim]next answers:[/]")
    for rank, other in enumerate(others, start=2):
        sure = f", confidence {other.confidence:.0%}" if other.confidence is not None else ""
        console.print(f"{rank}. [bold]{escape(other.answer)}[/]  (score {other.score:.2f}"
                      f"{sure}) [dim]from[/] {escape(other.passage.title or other.passage.id)}")
        line = snippet(other.passage.text, other.start, other.end, MORE_CONTEXT_CHARS)
        console.print(Text("   ") + line)


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
