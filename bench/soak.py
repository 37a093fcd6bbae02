"""Soak test (not in CI): a fixed-rate question load against the API for N minutes.

Open loop: requests are scheduled at a fixed rate whatever the server does, and each
latency is measured from its scheduled time, so a stall shows up as latency instead of
silently lowering the load (no coordinated omission). A share of the questions is made
unique (a cache miss: rank, route, read on the shards); the rest repeat (cache hits).
Every window it prints and records: requests, errors (non-200 or no answer), latency
percentiles, and Redis memory summed over the masters of the local cluster in --dir.

    python bench/soak.py --url http://127.0.0.1:8080 --dir .shardqa/cluster \
        --rate 20 --minutes 10 --miss-ratio 0.1 --out bench/results/soak.json
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.settings import ServeSettings  # noqa: E402 - after the path, as a script
from bench.timing import ApiClient  # noqa: E402
from cluster.options import dir_option  # noqa: E402
from models.evaluation import percentiles  # noqa: E402

QUESTIONS = [
    "Who designed and built the Eiffel Tower?",
    "What is the highest mountain on Earth above sea level?",
    "When was Philosophiae Naturalis Principia Mathematica first published?",
    "What is the capital of Japan?",
    "Which formula has been called the world's most famous equation?",
    "What do plants convert light energy into?",
    "Who was Isaac Newton?",
    "What is DNA?",
    "Where is Mount Everest?",
    "What is the largest river by discharge?",
]
MISS_SUBJECTS = ["Paris", "Japan", "Newton", "Everest", "DNA", "light", "river", "tower",
                 "mountain", "equation", "Tokyo", "Moon", "physics", "history", "music"]


@dataclass
class Window:
    started: float
    sent: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)


def redis_memory(directory: str) -> int | None:
    """Bytes used, summed over the masters (as admin), or None without a local cluster."""
    from cluster.connection import Target, connect
    from cluster.local import LocalCluster

    if not LocalCluster(directory).exists():
        return None
    client = connect(Target(directory=directory))
    try:
        return sum(client.get_redis_connection(n).info("memory")["used_memory"]
                   for n in client.get_primaries())
    finally:
        client.close()


def latency_ms(seconds: list[float], qs: tuple[float, ...] = (50, 95, 99)) -> dict:
    """Percentiles (models.evaluation.percentiles) and the maximum, in ms (2 decimals)."""
    stats = percentiles([x * 1000 for x in seconds], qs)
    out = {k: round(v, 2) for k, v in stats.items() if k.startswith("p")}
    return out | {"max": round(max(seconds or [0]) * 1000, 2)}


@dataclass(frozen=True)
class Outcome:
    """One request of the load: when it was due and done (monotonic), what came back."""

    scheduled: float
    done: float
    question: str
    status: int | None  # None: no HTTP answer at all
    body: dict
    error: str | None  # the error's kind ("http 503", "ConnectionError", ...), None if ok


class Load:
    """The open-loop load: requests at fixed times, latencies by window, errors by kind;
    ``observe`` (if given) sees every request's Outcome, from the load's threads."""

    def __init__(self, client: ApiClient, directory: str,
                 observe: Callable[[Outcome], None] | None = None):
        self.client, self.directory, self.observe = client, directory, observe
        self.windows = [Window(0.0)]
        self.memory: list[tuple[float, int | None]] = []
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def one(self, scheduled: float, question: str) -> None:
        kind, status, body = None, None, {}
        try:
            _, status, body = self.client.get(question)
            if status != 200:
                kind = f"http {status}"
            elif "answer" not in body:
                kind = "no answer field"
        except Exception as exc:  # noqa: BLE001 - every failure is counted, by kind
            kind = type(exc).__name__
        done = time.monotonic()
        with self.lock:
            w = self.windows[-1]
            w.sent += 1
            w.latencies.append(done - scheduled)
            if kind:
                w.errors += 1
                w.error_kinds[kind] = w.error_kinds.get(kind, 0) + 1
        if self.observe is not None:
            self.observe(Outcome(scheduled, done, question, status, body, kind))

    def close_window(self, now: float) -> None:
        mem = redis_memory(self.directory)
        self.memory.append((round(now - self.t0, 1), mem))
        with self.lock:
            w = self.windows[-1]
            self.windows.append(Window(round(now - self.t0, 1)))
        lat = latency_ms(w.latencies)
        print(f"t={now - self.t0:6.0f}s sent {w.sent:6d} errors {w.errors:4d} "
              f"p50 {lat.get('p50', 0):7.1f} ms p95 {lat.get('p95', 0):7.1f} ms "
              f"p99 {lat.get('p99', 0):7.1f} ms max {lat['max']:7.1f} ms "
              f"redis {(mem or 0) / 2**20:7.1f} MiB", flush=True)

    def run(self, rate: float, minutes: float, window: float, miss_ratio: float,
            threads: int, rng: random.Random) -> None:
        def pick(n: int) -> str:
            if rng.random() < miss_ratio:
                return (f"What about {rng.choice(MISS_SUBJECTS)} and "
                        f"{rng.choice(MISS_SUBJECTS)} number {n}?")
            return rng.choice(QUESTIONS)

        self.t0 = time.monotonic()
        self.memory.append((0.0, redis_memory(self.directory)))
        self.pace(rate, minutes * 60, threads, pick, window)
        self.close_window(time.monotonic())

    def pace(self, rate: float, seconds: float, threads: int, pick: Callable[[int], str],
             window: float | None = None, stop: threading.Event | None = None) -> None:
        """Open loop from now: question ``pick(n)`` is due ``n / rate`` seconds in, for
        ``seconds`` or until ``stop`` is set; a window closes every ``window`` seconds.
        Returns once every request sent has finished."""
        self.t0 = t0 = time.monotonic()
        stop = stop or threading.Event()
        next_window, n = t0 + window if window else math.inf, 0
        with ThreadPoolExecutor(threads) as pool:
            while (scheduled := t0 + n / rate) < t0 + seconds and not stop.is_set():
                now = time.monotonic()
                if now >= next_window:
                    self.close_window(now)
                    next_window += window
                if scheduled > now and stop.wait(scheduled - now):
                    break
                pool.submit(self.one, scheduled, pick(n))
                n += 1

    def result(self) -> dict:
        done = [w for w in self.windows if w.sent]
        every = [x for w in done for x in w.latencies]
        kinds: dict[str, int] = {}
        for w in done:
            for k, v in w.error_kinds.items():
                kinds[k] = kinds.get(k, 0) + v
        errors = sum(w.errors for w in done)
        return {
            "requests": len(every), "errors": errors,
            "error_rate": errors / max(1, len(every)), "error_kinds": kinds,
            "latency_ms": latency_ms(every, (50, 95, 99, 99.9)),
            "windows": [{"t_s": w.started, "requests": w.sent, "errors": w.errors,
                         **{f"{k}_ms": v for k, v in latency_ms(w.latencies, (50, 99)).items()
                            if k != "max"}} for w in done],
            "redis_used_memory_bytes": self.memory,
        }


@click.command()
@click.option("--url", default=f"http://{ServeSettings.host}:{ServeSettings.port}",
              show_default=True, help="the API")
@dir_option
@click.option("--token", default=None, envvar="SHARDQA_API_TOKEN", help="the API token")
@click.option("--rate", type=float, default=20.0, show_default=True,
              help="questions per second")
@click.option("--minutes", type=float, default=10.0, show_default=True)
@click.option("--miss-ratio", type=float, default=0.1, show_default=True,
              help="share of unique questions (cache misses)")
@click.option("--window", type=float, default=30.0, show_default=True,
              help="seconds per report line")
@click.option("--threads", type=int, default=64, show_default=True)
@click.option("--out", default=None, help="write the figures as JSON here")
@click.option("--seed", type=int, default=1, show_default=True)
def main(url, cluster_dir, token, rate, minutes, miss_ratio, window, threads, out, seed):
    """Soak test: a fixed-rate question load against the API for N minutes."""
    client = ApiClient(url, token=token)
    # warm-up, outside the figures: the repeated questions are asked once, so that the load
    # measures a warm cache plus the configured share of misses
    for question in QUESTIONS:
        _, status, _ = client.get(question)
        print(f"warm-up: {status} {question}", flush=True)
    load = Load(client, cluster_dir)
    load.run(rate, minutes, window, miss_ratio, threads, random.Random(seed))
    figures = load.result()
    result = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
              "url": url, "rate_per_s": rate, "minutes": minutes, "miss_ratio": miss_ratio,
              **figures, "achieved_rate_per_s": round(figures["requests"] / (minutes * 60), 2)}
    print(json.dumps({k: v for k, v in result.items() if k != "windows"}, indent=2))
    if out:
        Path(out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
