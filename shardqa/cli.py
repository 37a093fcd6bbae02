"""The ``shardqa`` console script: each package contributes its own command group."""

from __future__ import annotations

import sys

import click
import redis

from api.cli import serve_command
from bench.cli import bench_command
from cluster.cli import cluster_group
from cluster.errors import ShardqaError
from gears.cli import reembed_command, status_command, worker_command
from loaders.cli import ingest_command
from models.cli import model_group
from records.cli import sync_command
from shardqa import demo, evaluation, replay, scale, stack, supervisor
from shardqa.ask import ask_command


class ShardqaGroup(click.Group):
    """Turns expected failures into one line on stderr and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ShardqaError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            click.echo(f"error: Redis is unreachable: {exc}", err=True)
            sys.exit(3)
        except redis.RedisError as exc:
            click.echo(f"error: Redis said: {exc}", err=True)
            sys.exit(3)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=ShardqaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="shardqa")
def cli() -> None:
    """shardqa: Redis-native distributed question answering."""


cli.add_command(cluster_group)
cluster_group.add_command(scale.add_master_command)
cluster_group.add_command(scale.rebalance_command)
for command in (stack.up_command, stack.down_command, demo.demo_command, model_group,
                ingest_command, worker_command, ask_command, status_command,
                evaluation.eval_command, serve_command, bench_command,
                supervisor.supervise_command, sync_command, replay.replay_command,
                reembed_command):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="shardqa")


if __name__ == "__main__":
    main()
