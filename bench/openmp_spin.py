"""How long torch's idle OpenMP threads spin, against a lone forward pass (models/openmp.py).

For each setting (spin counts: libgomp's default 300,000 and a short 10,000 by default;
and no spinning at all, ``OMP_WAIT_POLICY=PASSIVE``, what shardqa sets),
a fresh interpreter (libgomp reads the setting once, when torch loads) times the int8 reader
at 2 threads: the wall and CPU ms of one forward pass at a few shapes, and the CPU the
process burns in a 20 ms pause after each pass (what a worker's idle pool thread costs the
other processes between two batches). Settings are run round-robin, ``--rounds`` times.

    python -m bench.openmp_spin [--rounds 3] [--spins 300000,10000]
                                [--out bench/results/openmp-spin-DATE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SPINS = (300_000, 10_000)  # libgomp's default, and a short spin
SHAPES = ((1, 192), (5, 192))
PAUSE_S = 0.02

_PROBE = """
import json, sys, time, statistics
import torch
torch.set_num_threads(2)
module = torch.jit.load(sys.argv[1])
out = {}
for batch, length in json.loads(sys.argv[2]):
    ids = torch.randint(1000, 20000, (batch, length))
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    with torch.inference_mode():
        for _ in range(3):
            module(*args)
        wall, cpu, idle = [], [], []
        for _ in range(12):
            c0, t0 = time.process_time(), time.perf_counter()
            module(*args)
            c1, t1 = time.process_time(), time.perf_counter()
            time.sleep(float(sys.argv[3]))
            wall.append((t1 - t0) * 1000)
            cpu.append((c1 - c0) * 1000)
            idle.append((time.process_time() - c1) * 1000)
    out[f"{batch}x{length}"] = {"forward_wall_ms": statistics.median(wall),
                                "forward_cpu_ms": statistics.median(cpu),
                                "pause_cpu_ms": statistics.median(idle)}
print(json.dumps(out))
"""


def probe(module: Path, env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(module), json.dumps(SHAPES),
                           str(PAUSE_S)], env={**clean, **env}, capture_output=True, text=True,
                          check=True, timeout=600)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from bench.run import resolve_artifact

    ap = argparse.ArgumentParser(prog="python -m bench.openmp_spin", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--spins", default=",".join(map(str, DEFAULT_SPINS)),
                    help="spin counts to compare (OMP_WAIT_POLICY=PASSIVE is always added)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    module = resolve_artifact(None, print) / "reader-int8.pt"
    load0 = [round(x, 2) for x in os.getloadavg()]
    settings = {f"GOMP_SPINCOUNT={n}": {"GOMP_SPINCOUNT": n}
                for n in args.spins.split(",") if n.strip()}
    settings["OMP_WAIT_POLICY=PASSIVE"] = {"OMP_WAIT_POLICY": "PASSIVE"}
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, env in settings.items():
            runs[name].append(probe(module, env))
            print(name, runs[name][-1], flush=True)
    summary = {name: {shape: {k: round(statistics.median(r[shape][k] for r in rs), 2)
                              for k in rs[0][shape]} for shape in rs[0]}
               for name, rs in runs.items()}
    out = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cores": os.cpu_count(), "loadavg_at_start": load0,
                       "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
           "reader": "the bundled reader, int8 TorchScript, 2 threads",
           "pause_s": PAUSE_S, "statistic": "median over rounds of each round's median",
           "summary": summary, "rounds": runs}
    path = args.out or Path("bench/results") / f"openmp-spin-{time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
