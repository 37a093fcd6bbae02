"""``shardqa serve``: the API under waitress, a production WSGI server."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from api.settings import ServeSettings
from cluster.connection import connect
from cluster.errors import ShardqaError
from cluster.options import start_logging, target_options
from gears import asker
from gears.ranking import POSTINGS_CAP
from gears.retrieval import DEFAULT_MODE, MODES, QUESTION_THREADS

DEFAULTS = ServeSettings()

#: ``--min-confidence`` of ``serve`` and ``ask``: a bad value is one line and exit code 2
#: (gears.asker checks it, as it checks a request's)
min_confidence_option = click.option(
    "--min-confidence", default=asker.MIN_CONFIDENCE, envvar="SHARDQA_MIN_CONFIDENCE",
    metavar="0..1", callback=lambda _ctx, _param, value: asker.check_min_confidence(value),
    help="say 'no answer' (with the reason) when the answer's confidence, the one shown, is "
         "below this; 0: off [default: off] [env SHARDQA_MIN_CONFIDENCE]")


@click.command("serve")
@click.option("--host", default=DEFAULTS.host, show_default=True, envvar="SHARDQA_API_HOST")
@click.option("--port", default=DEFAULTS.port, show_default=True,
              type=click.IntRange(1, 65535), envvar="SHARDQA_API_PORT")
@click.option("--threads", default=DEFAULTS.threads, show_default=True,
              type=click.IntRange(1, 512), envvar="SHARDQA_API_THREADS",
              help="request threads (concurrent questions)")
@click.option("--max-uncached", default=None, type=click.IntRange(1, 512),
              envvar="SHARDQA_MAX_UNCACHED",
              help="uncached questions read at once; more get 503 at once, so /health and "
              f"cached answers never wait [default: threads - {DEFAULTS.reserved_threads}]")
@click.option("--request-timeout", default=DEFAULTS.request_timeout_s, show_default=True,
              type=click.FloatRange(1, 600), envvar="SHARDQA_REQUEST_TIMEOUT",
              help="seconds a client may take to send a request (headers and body)")
@click.option("--connection-limit", default=DEFAULTS.connection_limit, show_default=True,
              type=click.IntRange(10, 100_000), envvar="SHARDQA_CONNECTION_LIMIT",
              help="open client connections at most")
@click.option("--timeout", default=asker.ASK_TIMEOUT_S, show_default=True,
              type=click.FloatRange(0.1, 600), envvar="SHARDQA_ASK_TIMEOUT",
              help="seconds to wait for shard workers")
@click.option("--cache-ttl", default=asker.CACHE_TTL_S, show_default=True,
              type=click.IntRange(1), envvar="SHARDQA_CACHE_TTL",
              help="answer cache TTL in seconds")
@click.option("--retrieval-weight", default=None, type=click.FloatRange(0),
              envvar="SHARDQA_RETRIEVAL_WEIGHT",
              help="weight of the passage's relative retrieval score in the answer score "
                   f"[default: {asker.HYBRID_RETRIEVAL_WEIGHT:g} hybrid, "
                   f"{asker.RETRIEVAL_WEIGHT:g} BM25 alone]")
@click.option("--min-rank-ratio", default=None, type=click.FloatRange(0, 1),
              envvar="SHARDQA_MIN_RANK_RATIO",
              help="skip candidates ranked below this share of the best retrieval score; 0 "
                   f"reads all k [default: {asker.HYBRID_MIN_RANK_RATIO:g} hybrid, "
                   f"{asker.MIN_RANK_RATIO:g} BM25 alone]")
@min_confidence_option
@click.option("--retrieval", "retrieval_mode", default=DEFAULT_MODE, show_default=True,
              type=click.Choice(MODES), envvar="SHARDQA_RETRIEVAL",
              help="hybrid: BM25 and dense fused where the cluster has vector sets and an "
                   "encoder (else BM25); bm25: never embed the question")
@click.option("--rank-cap", default=POSTINGS_CAP, show_default=True, type=click.IntRange(0),
              envvar="SHARDQA_RANK_CAP",
              help="postings read per query term and partition, highest tf first; 0 reads all")
@click.option("--token", default=None, envvar="SHARDQA_API_TOKEN",
              help="require 'Authorization: Bearer TOKEN' on /qa; prefer the env var or "
              "--token-file (a flag shows in ps) [env SHARDQA_API_TOKEN]")
@click.option("--token-file", default=None, envvar="SHARDQA_API_TOKEN_FILE",
              type=click.Path(dir_okay=False),
              help="read the bearer token from this file [env SHARDQA_API_TOKEN_FILE]")
@click.option("--rate-limit", default=DEFAULTS.rate_limit, show_default=True,
              type=click.FloatRange(0), envvar="SHARDQA_RATE_LIMIT",
              help="requests/s per client address (0: off)")
@target_options
def serve_command(host, port, threads, max_uncached, request_timeout, connection_limit,
                  timeout, cache_ttl, retrieval_weight, min_rank_ratio, min_confidence,
                  retrieval_mode, rank_cap, token, token_file, rate_limit, target):
    """Serve the QA API (GET/POST /qa, /health, /metrics, /openapi.json) and the page at /."""
    from api.app import create_app
    from api.server import serve

    if token_file:
        token = read_token(token_file)

    start_logging(logging.INFO)
    client = connect(target, max_connections=4 * threads)
    questions = asker.Asker(client, timeout_s=timeout, cache_ttl_s=cache_ttl,
                            retrieval_weight=retrieval_weight, min_rank_ratio=min_rank_ratio,
                            rank_cap=rank_cap, retrieval_mode=retrieval_mode,
                            encoder_threads=QUESTION_THREADS, min_confidence=min_confidence)
    questions.encoder.current(questions.pmap)  # load the encoder(s) now, not on a question
    app = create_app(questions,
                     token=token, rate_limit=rate_limit,
                     max_uncached=max_uncached or DEFAULTS.max_uncached(threads))
    click.echo(f"shardqa API on http://{host}:{port}")
    serve(app, host=host, port=port, threads=threads, request_timeout_s=request_timeout,
          connection_limit=connection_limit)


def read_token(path: str) -> str:
    """The bearer token in ``path`` (surrounding whitespace dropped); never empty."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ShardqaError(f"cannot read the token file {path}: {exc}", exit_code=2) from None
    if not token:
        raise ShardqaError(f"the token file {path} is empty", exit_code=2)
    return token
