"""The ``shardqa`` console script: each package contributes its own command group."""

from __future__ import annotations

import sys

import click
import redis

from cluster.cli import cluster_group
from cluster.errors import ShardqaError
from shardqa import demo, stack


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
cli.add_command(stack.up_command)
cli.add_command(stack.down_command)
cli.add_command(demo.demo_command)


def _add_optional_groups() -> None:
    """Groups of packages that are still growing register here as they land."""
    import importlib

    for module, attr in [
        ("models.cli", "model_group"),
        ("loaders.cli", "ingest_command"),
        ("gears.cli", "register"),
        ("api.cli", "serve_command"),
        ("bench.cli", "bench_command"),
        ("shardqa.scale", "register"),
        ("records.cli", "sync_command"),
        ("shardqa.replay", "replay_command"),
    ]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        obj = getattr(mod, attr)
        if isinstance(obj, click.Command):
            cli.add_command(obj)
        else:
            obj(cli)


_add_optional_groups()


def main() -> None:
    cli(prog_name="shardqa")


if __name__ == "__main__":
    main()
