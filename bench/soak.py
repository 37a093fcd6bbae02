"""Soak test (not in CI): a fixed-rate question load against the API for N minutes.

Open loop: requests are scheduled at a fixed rate whatever the server does, and each
latency is measured from its scheduled time, so a stall shows up as latency instead of
silently lowering the load (no coordinated omission). A share of the questions is made
unique (a cache miss: rank, route, read on the shards); the rest repeat (cache hits).
Every window it prints and records: requests, errors (non-200 or no answer), latency
percentiles, and Redis memory summed over the masters.

    python bench/soak.py --url http://127.0.0.1:8080 --dir .shardqa/cluster \
        --rate 20 --minutes 10 --miss-ratio 0.1 --out bench/results/soak.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Client:
    """One keep-alive HTTP connection per worker thread."""

    def __init__(self, url: str, token: str | None):
        self.parsed = urlparse(url)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.local = threading.local()

    def get(self, question: str) -> tuple[int, dict]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.parsed.hostname, self.parsed.port, timeout=60)
            self.local.conn = conn
        try:
            conn.request("GET", "/qa?" + urlencode({"q": question}), headers=self.headers)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self.local.conn = None
            raise
        return resp.status, json.loads(body)


def redis_memory(directory: str | None) -> int | None:
    """Bytes used, summed over the masters (as admin), or None without a cluster folder."""
    if not directory:
        return None
    from cluster.connection import Target, connect

    client = connect(Target(directory=directory))
    try:
        return sum(client.get_redis_connection(n).info("memory")["used_memory"]
                   for n in client.get_primaries())
    finally:
        client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--dir", default=os.environ.get("SHARDQA_DIR"),
                    help="local cluster folder, to sample Redis memory")
    ap.add_argument("--token", default=os.environ.get("SHARDQA_API_TOKEN"))
    ap.add_argument("--rate", type=float, default=20.0, help="questions per second")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--miss-ratio", type=float, default=0.1,
                    help="share of unique questions (cache misses)")
    ap.add_argument("--window", type=float, default=30.0, help="seconds per report line")
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    client = Client(args.url, args.token)
    windows: list[Window] = []
    lock = threading.Lock()
    memory: list[tuple[float, int | None]] = []
    windows.append(Window(0.0))

    def one(scheduled: float, question: str) -> None:
        kind = None
        try:
            status, body = client.get(question)
            if status != 200:
                kind = f"http {status}"
            elif "answer" not in body:
                kind = "no answer field"
        except Exception as exc:  # noqa: BLE001 - every failure is counted, by kind
            kind = type(exc).__name__
        latency = time.monotonic() - scheduled
        with lock:
            w = windows[-1]
            w.sent += 1
            w.latencies.append(latency)
            if kind:
                w.errors += 1
                w.error_kinds[kind] = w.error_kinds.get(kind, 0) + 1

    def close_window(now: float) -> None:
        mem = redis_memory(args.dir)
        memory.append((round(now - t0, 1), mem))
        with lock:
            w = windows[-1]
            windows.append(Window(round(now - t0, 1)))
        lat = w.latencies
        print(f"t={now - t0:6.0f}s sent {w.sent:6d} errors {w.errors:4d} "
              f"p50 {percentile(lat, .5) * 1000:7.1f} ms p95 {percentile(lat, .95) * 1000:7.1f}"
              f" ms p99 {percentile(lat, .99) * 1000:7.1f} ms max {max(lat or [0]) * 1000:7.1f}"
              f" ms redis {(mem or 0) / 2**20:7.1f} MiB", flush=True)

    # warm-up, outside the figures: the repeated questions are asked once, so that the load
    # measures a warm cache plus the configured share of misses
    for question in QUESTIONS:
        status, _ = client.get(question)
        print(f"warm-up: {status} {question}", flush=True)
    t0 = time.monotonic()
    memory.append((0.0, redis_memory(args.dir)))
    interval = 1.0 / args.rate
    end = t0 + args.minutes * 60
    next_window = t0 + args.window
    n = 0
    with ThreadPoolExecutor(args.threads) as pool:
        while True:
            scheduled = t0 + n * interval
            if scheduled >= end:
                break
            now = time.monotonic()
            if now >= next_window:
                close_window(now)
                next_window += args.window
            if scheduled > now:
                time.sleep(scheduled - now)
            if rng.random() < args.miss_ratio:
                question = (f"What about {rng.choice(MISS_SUBJECTS)} and "
                            f"{rng.choice(MISS_SUBJECTS)} number {n}?")
            else:
                question = rng.choice(QUESTIONS)
            pool.submit(one, scheduled, question)
            n += 1
    close_window(time.monotonic())
    done = [w for w in windows if w.sent]
    every = [x for w in done for x in w.latencies]
    errors = sum(w.errors for w in done)
    kinds: dict[str, int] = {}
    for w in done:
        for k, v in w.error_kinds.items():
            kinds[k] = kinds.get(k, 0) + v
    result = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "url": args.url, "rate_per_s": args.rate, "minutes": args.minutes,
        "miss_ratio": args.miss_ratio, "requests": len(every), "errors": errors,
        "error_rate": errors / max(1, len(every)), "error_kinds": kinds,
        "latency_ms": {q: round(percentile(every, p) * 1000, 2) for q, p in
                       (("p50", .5), ("p95", .95), ("p99", .99), ("p999", .999))}
        | {"max": round(max(every or [0]) * 1000, 2)},
        "achieved_rate_per_s": round(len(every) / (args.minutes * 60), 2),
        "windows": [{"t_s": w.started, "requests": w.sent, "errors": w.errors,
                     "p50_ms": round(percentile(w.latencies, .5) * 1000, 2),
                     "p99_ms": round(percentile(w.latencies, .99) * 1000, 2)} for w in done],
        "redis_used_memory_bytes": memory,
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("windows",)}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
