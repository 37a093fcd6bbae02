"""``shardqa model``: export a reader or a passage encoder, push it to every master, list and
repair the copies."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from cluster.connection import connect
from cluster.options import target_options
from models.train import train_command
from models.variants import ARTIFACT_VARIANTS

console = Console(highlight=False)


@click.group("model")
def model_group() -> None:
    """Export, push, list and sync the reader and the passage encoder."""


@model_group.command("export")
@click.argument("source")
@click.option("--name", required=True, help="model name (letters, digits, . _ -)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="artifact folder [default: artifacts/NAME]")
@click.option("--int8", is_flag=True, help="also write a dynamically quantized int8 variant")
@click.option("--bf16", is_flag=True, help="readers: also write a bf16 variant (fast on CPUs "
              "with avx512_bf16 or AMX only)")
@click.option("--kind", type=click.Choice(["auto", "reader", "encoder"]), default="auto",
              show_default=True, help="reader (extractive QA) or encoder (sentence "
              "embeddings); auto: from the checkpoint's config")
@click.option("--encoder", "as_encoder", is_flag=True, help="same as --kind encoder")
@click.option("--max-seq-len", default=None, type=click.IntRange(8, 8192),
              help="reader: 384; encoder: the model's sentence-transformers max_seq_length")
@click.option("--null-threshold", type=float, default=None,
              help="SQuAD 2.0-style readers: say 'no answer' when a passage's null score "
                   "beats its best span by more than this (fit one with 'shardqa eval "
                   "--fit-null-threshold') [default: always answer]")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="readers: temperature of the answers' confidence (fit one with 'shardqa "
                   "eval --fit-temperature') [default: 1]")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=None,
              help="readers: say 'no answer' when a passage's best span is less likely than "
                   "this within the passage (for SQuAD 1.1 readers; not the confidence "
                   "answers show: for that, 'serve/ask --min-confidence') [default: off]")
@click.option("--int8-keep-fp32", "keep_fp32", default=None, metavar="LAYERS",
              help="readers: comma-separated Linear layers the int8 variant leaves in fp32, "
                   "or 'none' [default: those SOURCE's shardqa-int8.json names, written by "
                   "'shardqa model int8-select']")
def export_command(source, name, out_dir, int8, bf16, kind, as_encoder, max_seq_len,
                   null_threshold, temperature, min_confidence, keep_fp32):
    """Trace SOURCE (a Hugging Face extractive-QA checkpoint folder, or a sentence encoder)
    to TorchScript."""
    from models.export import check_name, checkpoint_kind, export
    from models.export_encoder import export_encoder

    check_name(name)
    kind = "encoder" if as_encoder else (checkpoint_kind(source) if kind == "auto" else kind)
    out = Path(out_dir) if out_dir else Path("artifacts") / name
    with console.status(f"exporting the {kind}") as status:
        def say(message: str) -> None:
            status.update(message)
            console.print(message)

        if kind == "encoder":
            if bf16:
                raise click.UsageError("--bf16 is for readers")
            path = export_encoder(source, name, out, int8=int8, max_seq_len=max_seq_len,
                                  log=say)
        else:
            path = export(source, name, out, int8=int8, bf16=bf16,
                          max_seq_len=max_seq_len or 384,
                          null_threshold=null_threshold, temperature=temperature,
                          min_confidence=min_confidence, int8_keep_fp32=_layers(keep_fp32),
                          log=say)
    console.print(f"{kind} artifact: {path}")


def _layers(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [] if text.strip() == "none" else [x.strip() for x in text.split(",") if x.strip()]


@model_group.command("int8-select")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("--dev", "dev_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="SQuAD-format file to score on [default: data/squad/dev.json]")
@click.option("--budget", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="F1 points int8 may lose against fp32")
@click.option("--sample", type=click.IntRange(min=1), default=300, show_default=True,
              help="questions whose windows rank the layers")
@click.option("--max-layers", type=click.IntRange(min=1), default=8, show_default=True,
              help="give up after keeping this many layers in fp32")
@click.option("--fp32-f1", type=float, default=None,
              help="fp32's F1 on --dev if already known (e.g. from the model card): not "
                   "scored again [default: score it]")
@click.option("--write/--no-write", default=True, show_default=True,
              help="store the choice in SOURCE/shardqa-int8.json (export's default)")
def int8_select_command(source, dev_file, budget, sample, max_layers, fp32_f1, write):
    """Choose the fewest Linear layers of the checkpoint SOURCE whose staying fp32 brings its
    int8 variant within --budget F1 of fp32 (reader mode on --dev)."""
    from models.int8_selection import select, write_choice
    from shardqa import datasets

    dev = dev_file or datasets.shown(datasets.SQUAD_DEV)
    record = select(source, dev_file or datasets.SQUAD_DEV, budget=budget, sample=sample,
                    max_layers=max_layers, fp32_f1=fp32_f1, log=console.print)
    record["dev"] = str(dev)
    last = record["steps"][-1]
    verdict = "within" if record["reached"] else "NOT within"
    console.print(f"int8 keeping {', '.join(last['keep_fp32']) or 'nothing'} in fp32: F1 "
                  f"{last['f1']:.2f} vs fp32 {record['fp32_f1']:.2f}, {verdict} {budget:g}")
    if write:
        console.print(f"wrote {write_choice(source, record)} (export it again to use it)")
    if not record["reached"]:
        raise SystemExit(1)


def _progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    console=console, transient=True)


@model_group.command("push")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("--variant", type=click.Choice(ARTIFACT_VARIANTS), default="fp32",
              show_default=True)
@click.option("--chunk-mb", type=click.FloatRange(0.001, 64), default=64, show_default=True,
              help="chunk size in MB (at most 64)")
@target_options
def push_command(artifact, variant, chunk_mb, target):
    """Write ARTIFACT to every master, verify it, then switch each master to it."""
    from models import store
    from models.export import read_metadata

    info = read_metadata(Path(artifact))
    size = info.get("variants", {}).get(variant, {}).get("size", 0)
    with connect(target) as client:
        masters = len(store.master_tags(client))
        with _progress_bar() as bar:
            task = bar.add_task(f"pushing {info.get('kind', 'reader')} {info.get('name')} "
                                f"{variant}", total=size * masters)
            meta = store.push(client, Path(artifact), variant=variant,
                              chunk_size=int(chunk_mb * (1 << 20)),
                              progress=lambda n: bar.advance(task, n))
    if meta["written"]:
        console.print(f"{meta['kind']} {meta['name']} {meta['version']} ({variant}, "
                      f"{meta['size']:,} bytes, "
                      f"{meta['chunks']} chunks) is current on {', '.join(meta['written'])}")
        if meta["kind"] == "encoder":
            console.print("the shard workers now embed the passages of every partition with "
                          "it; questions use the vectors each partition has until its new set "
                          "is complete ('shardqa reembed' follows them)")
    else:
        console.print(f"{meta['kind']} {meta['name']} {meta['version']} ({variant}) is "
                      f"already current on "
                      f"every master; nothing to do")


@model_group.command("list")
@target_options
def list_command(target):
    """Stored models: names, versions, sizes, and which masters hold them."""
    from models import store

    with connect(target) as client:
        rows = store.list_models(client)
        masters = sorted(store.master_tags(client))
    if not rows:
        console.print("no reader model stored; run 'shardqa model push ARTIFACT'")
        return
    table = Table("kind", "name", "version", "variant", "size", "chunks", "pushed", "held by",
                  "current on", title="models")
    for row in rows:
        held = "all" if sorted(row["masters"]) == masters else ", ".join(row["masters"])
        current = ("all" if sorted(row["current_on"]) == masters
                   else ", ".join(row["current_on"]) or "-")
        pushed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["pushed"]))
        table.add_row(row["kind"], row["name"], row["version"], row["variant"],
                      f"{row['size']:,}",
                      str(row["chunks"]), pushed, held, current)
    console.print(table)
    for row in rows:
        if row["corrupt_on"]:
            console.print(f"[red]corrupt:[/] {row['name']} {row['version']} on "
                          f"{', '.join(row['corrupt_on'])} fails its sha256 check: run "
                          "'shardqa model sync'", soft_wrap=True)
    for kind in sorted({r["kind"] for r in rows}):
        missing = [m for m in masters
                   if not any(m in r["current_on"] for r in rows if r["kind"] == kind)]
        if missing:
            console.print(f"no current {kind} on {', '.join(missing)}: run 'shardqa model "
                          "sync'")
    console.print(f"each master keeps its current version and the one before it; older "
                  f"versions are deleted at push ({len(masters)} masters)")


@model_group.command("sync")
@target_options
def sync_command(target):
    """Copy the current model to masters that lack it or hold a copy failing its sha256."""
    from models import store

    with connect(target) as client:
        with _progress_bar() as bar:
            task = bar.add_task("syncing", total=None)
            repaired = store.sync(client, progress=lambda n: bar.advance(task, n))
    if repaired:
        console.print(f"repaired {', '.join(repaired)}")
    else:
        console.print("every master already holds the current model; nothing to do")


model_group.add_command(train_command)
