"""``shardqa serve``: the API under waitress, a production WSGI server."""

from __future__ import annotations

import logging

import click

from api.settings import ServeSettings
from cluster.connection import connect
from cluster.options import target_options
from gears import asker
from gears.ranking import POSTINGS_CAP


@click.command("serve")
@click.option("--host", default=ServeSettings.host, show_default=True, envvar="SHARDQA_API_HOST")
@click.option("--port", default=ServeSettings.port, show_default=True,
              type=click.IntRange(1, 65535), envvar="SHARDQA_API_PORT")
@click.option("--threads", default=ServeSettings.threads, show_default=True,
              type=click.IntRange(1, 512), envvar="SHARDQA_API_THREADS",
              help="request threads (concurrent questions)")
@click.option("--timeout", default=asker.ASK_TIMEOUT_S, show_default=True,
              type=click.FloatRange(0.1, 600), envvar="SHARDQA_ASK_TIMEOUT",
              help="seconds to wait for shard workers")
@click.option("--cache-ttl", default=asker.CACHE_TTL_S, show_default=True,
              type=click.IntRange(1), envvar="SHARDQA_CACHE_TTL",
              help="answer cache TTL in seconds")
@click.option("--retrieval-weight", default=asker.RETRIEVAL_WEIGHT, show_default=True,
              type=click.FloatRange(0), envvar="SHARDQA_RETRIEVAL_WEIGHT",
              help="weight of the passage's relative BM25 score in the answer score")
@click.option("--min-rank-ratio", default=asker.MIN_RANK_RATIO, show_default=True,
              type=click.FloatRange(0, 1), envvar="SHARDQA_MIN_RANK_RATIO",
              help="skip candidates ranked below this share of the best BM25 score; 0 reads "
                   "all k")
@click.option("--rank-cap", default=POSTINGS_CAP, show_default=True, type=click.IntRange(0),
              envvar="SHARDQA_RANK_CAP",
              help="postings read per query term and partition, highest tf first; 0 reads all")
@click.option("--token", default=None, envvar="SHARDQA_API_TOKEN",
              help="require 'Authorization: Bearer TOKEN' on /qa [env SHARDQA_API_TOKEN]")
@click.option("--rate-limit", default=ServeSettings.rate_limit, show_default=True,
              type=click.FloatRange(0), envvar="SHARDQA_RATE_LIMIT",
              help="requests/s per client address (0: off)")
@target_options
def serve_command(host, port, threads, timeout, cache_ttl, retrieval_weight, min_rank_ratio,
                  rank_cap, token, rate_limit, target):
    """Serve the QA API (GET/POST /qa, /health, /metrics, /openapi.json) and the page at /."""
    from waitress import serve

    from api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    client = connect(target, max_connections=4 * threads)
    questions = asker.Asker(client, timeout_s=timeout, cache_ttl_s=cache_ttl,
                            retrieval_weight=retrieval_weight, min_rank_ratio=min_rank_ratio,
                            rank_cap=rank_cap)
    app = create_app(questions, token=token, rate_limit=rate_limit)
    click.echo(f"shardqa API on http://{host}:{port}")
    serve(app, host=host, port=port, threads=threads, ident="shardqa")
