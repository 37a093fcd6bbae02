"""The bf16 reader variant against fp32 and int8 (issues 13 and 17): dev F1 in reader mode,
the answers that differ from fp32's, forward time at the k=5 batch (5 x 192) and a single
question (1 x 128) with the variants timed round-robin, and what exporting bf16 adds to the
bundled reader's first export (``make demo``).

    python -m bench.bf16_reader [--artifact DIR] [--threads 2] [--runs 15] [--no-export-time]
                                [--out bench/results/bf16-reader-DATE.json]

Without --artifact the bundled reader is exported (fp32 + int8 + bf16) into the artifact
cache. bf16 is timed only where the CPU has fast bf16 (models/variants.py); elsewhere the
JSON says why. Load is recorded at start and end: on a shared machine, compare within a run.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import click
import torch

from bench import options
from bench.reader_forward import cpu_name, forward_rows
from models.artifact import load_reader
from models.evaluation import evaluate_reader, summarize
from models.squad import read_squad
from models.variants import fast_bf16
from shardqa import datasets

SHAPES = [(5, 192), (1, 128)]


def quality(artifact: Path, variants: list[str], threads: int) -> dict:
    """Reader-mode EM/F1 on the SQuAD dev subset per variant (as ``shardqa eval --mode
    reader``), and how many answers differ from fp32's."""
    examples = read_squad(datasets.SQUAD_DEV)
    out, answers = {}, {}
    for variant in variants:
        reader, described = load_reader(artifact, variant=variant, threads=threads)
        reader.warm_up()
        t0 = time.perf_counter()
        results = evaluate_reader(examples, reader, progress=False)
        report = summarize(results, file="dev", mode="reader", model=described)
        answers[variant] = [r.prediction for r in results]
        out[variant] = {"exact_match": round(report.exact_match, 2), "f1": round(report.f1, 2),
                        "count": report.count, "seconds": round(time.perf_counter() - t0, 1)}
    for variant, row in out.items():
        row["f1_delta_vs_fp32"] = round(row["f1"] - out["fp32"]["f1"], 2)
        row["answers_differing_from_fp32"] = sum(
            a != b for a, b in zip(answers[variant], answers["fp32"], strict=True))
    return out


def export_seconds() -> dict:
    """Seconds to export the bundled reader as ``default_artifact`` does, without and with
    bf16 (each into a fresh folder, CPU time too: wall time is noisy on a shared machine)."""
    from models.default import BUNDLED, NAME
    from models.export import export

    out = {}
    for label, bf16 in (("fp32_int8", False), ("fp32_int8_bf16", True)):
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu = time.perf_counter(), time.process_time()
            export(BUNDLED, NAME, Path(tmp) / "reader", int8=True, bf16=bf16)
            out[label] = {"wall_s": round(time.perf_counter() - wall, 1),
                          "cpu_s": round(time.process_time() - cpu, 1)}
    return out


def cpu_ms(artifact: Path, variants: list[str], runs: int) -> list[dict]:
    """Per shape and variant: median CPU ms of one forward on one torch thread (the calling
    thread's CPU time). Unlike wall time it barely moves when other jobs share the cores, so
    it compares the variants' work on a loaded machine; wall time on quiet cores is the
    figure users see."""
    from models.artifact import read_artifact
    from models.export import sample_inputs
    from models.layout import special_ids

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    modules = {v: read_artifact(artifact, v)[0] for v in variants}
    tokenizer = read_artifact(artifact, "fp32")[1]
    out = []
    try:
        for batch, length in SHAPES:
            ids, mask, types = sample_inputs(tokenizer.get_vocab_size(), special_ids(tokenizer),
                                             batch, length, seed=7)
            mask[:] = 1
            times: dict[str, list[float]] = {v: [] for v in variants}
            with torch.inference_mode():
                for r in range(runs + 2):
                    for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                        t0 = time.thread_time()
                        modules[v](ids, mask, types)
                        if r >= 2:
                            times[v].append((time.thread_time() - t0) * 1000)
            ms = {v: round(statistics.median(t), 1) for v, t in times.items()}
            out.append({"batch": batch, "length": length, "cpu_ms_1_thread": ms})
    finally:
        torch.set_num_threads(previous)
    return out


def speedups(rows: list[dict]) -> list[dict]:
    """Per shape: median ms per variant and bf16's speed-up over fp32 and int8."""
    out = []
    for row in rows:
        ms = {k[3:]: row[k]["median_ms"] for k in row if k.startswith("ts_")}
        entry = {"batch": row["batch"], "length": row["length"], "median_ms": ms}
        if "bf16" in ms:
            entry["bf16_speedup_vs_fp32"] = round(ms["fp32"] / ms["bf16"], 2)
            if "int8" in ms:
                entry["bf16_speedup_vs_int8"] = round(ms["int8"] / ms["bf16"], 2)
        out.append(entry)
    return out


@click.command()
@click.option("--artifact", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="a reader export with fp32, int8 and bf16 [default: the "
              "bundled reader's]")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--runs", default=15, show_default=True, type=click.IntRange(3, 1000))
@click.option("--no-export-time", is_flag=True, help="skip timing the two exports")
@click.option("--no-quality", is_flag=True, help="skip the dev F1 of each variant")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(artifact, threads, runs, no_export_time, no_quality, out) -> None:
    from models.default import default_artifact

    load_start = [round(x, 2) for x in os.getloadavg()]
    artifact = artifact or default_artifact(bf16=True)
    meta = json.loads((artifact / "shardqa-model.json").read_text())
    variants = [v for v in ("fp32", "int8", "bf16") if v in meta["variants"]]
    result = {
        "bench": "bf16_reader",
        "command": "python -m bench.bf16_reader" + (f" --threads {threads}" if threads != 2
                                                     else ""),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "fast_bf16": fast_bf16(), "loadavg_at_start": load_start},
        "reader": {"name": meta["name"], "version": meta["version"], "variants": variants,
                   "parity": meta.get("parity"),
                   "sizes_bytes": {k: v["size"] for k, v in meta["variants"].items()}},
        "bf16_matmul": options.bf16_check(threads),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not fast_bf16():
        result["bf16_not_timed"] = "no avx512_bf16/amx_bf16 flag: bf16 would be emulated"
    rows = forward_rows(artifact, threads, runs, SHAPES)
    result["forward"] = {"threads": threads, "runs": runs, "statistic": "median, round-robin",
                         "rows": rows, "summary": speedups(rows)}
    for row in result["forward"]["summary"]:
        click.echo(f"{row['batch']} x {row['length']}: {row['median_ms']}")
    timed = [v for v in variants if v != "bf16" or fast_bf16()]
    result["cpu_time"] = {"runs": runs, "statistic": "median thread CPU ms, round-robin",
                          "rows": cpu_ms(artifact, timed, runs)}
    for row in result["cpu_time"]["rows"]:
        click.echo(f"{row['batch']} x {row['length']} CPU ms, 1 thread: {row['cpu_ms_1_thread']}")
    if not no_quality:
        result["quality"] = quality(artifact, variants, threads)
        click.echo(json.dumps(result["quality"]))
    if not no_export_time:
        result["export_seconds"] = export_seconds()
        click.echo(json.dumps(result["export_seconds"]))
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = out or Path("bench/results") / f"bf16-reader-{time.strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
