"""What an uncached hybrid question costs through the API, stage by stage (issue 13).

Several APIs (e.g. the code before and after a change, each a ``shardqa serve`` on the same
cluster and workers) answer the same questions in alternating blocks, the answer cache
invalidated before every block (the generation bumped), so each answer is computed afresh
and both sides see the same load. Per API: client latency, the server's stage timings
(``timings_ms`` of each answer), passages and token windows read, the right passage among
those read and F1 (the questions have gold answers), and CPU time per question of the API
process, the shard workers and the Redis nodes (from /proc: wall times on a shared machine
are noisy, CPU seconds much less so).

    python -m bench.hybrid_speed --dir CLUSTER --api before URL PID --api after URL PID
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import click

from bench import corpus
from bench.retrieval_fusion import NATURAL
from bench.timing import ApiClient
from cluster import heartbeat, keys, partitions
from cluster.options import target_options
from models.evaluation import percentiles
from models.squad import read_squad, score_answer

RESULTS = Path(__file__).resolve().parent / "results"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def process_groups(client, api_pid: int) -> dict[str, list[int]]:
    """The PIDs whose CPU time is charged to a question: the API, the workers, Redis."""
    workers = [b.pid for b in heartbeat.live_workers(client).values() if b.pid]
    nodes = [int(client.get_redis_connection(n).info("server")["process_id"])
             for n in client.get_nodes()]
    return {"api": [api_pid], "workers": workers, "redis": nodes}


def snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()}


def question_set(natural: Path, dev: Path, dev_count: int) -> list:
    """The natural questions, then the first ``dev_count`` of SQuAD dev in the bench's
    shuffled order (the questions ``shardqa bench`` asks first)."""
    return ([("natural", ex) for ex in read_squad(natural)]
            + [("squad-dev", ex) for ex in corpus.dev_questions(dev)[:dev_count]])


class Side:
    """One API's answers and costs."""

    def __init__(self, name: str, url: str, pid: int):
        self.name, self.api, self.pid = name, ApiClient(url), pid
        self.rows: list[dict] = []
        self.cpu = {"api": 0.0, "workers": 0.0, "redis": 0.0}

    def ask_block(self, client, pmap, block: list, k: int) -> None:
        groups = process_groups(client, self.pid)
        before = snapshot(groups)
        for set_name, ex in block:
            ms, status, body = self.api.get(ex.question, k)
            self.rows.append(row(client, pmap, set_name, ex, ms, status, body))
        after = snapshot(groups)
        for name in self.cpu:
            self.cpu[name] += after[name] - before[name]

    def summary(self) -> dict:
        ok = [r for r in self.rows if r["status"] == 200 and not r["cached"]]
        out = {"questions": len(self.rows), "answered_uncached": len(ok),
               "errors": sum(r["status"] != 200 for r in self.rows),
               "cpu_ms_per_question": {n: round(1000 * s / max(1, len(self.rows)), 1)
                                       for n, s in self.cpu.items()}}
        for set_name in sorted({r["set"] for r in ok}):
            rows = [r for r in ok if r["set"] == set_name]
            stages = sorted({s for r in rows for s in r["timings"]})
            out[set_name] = {
                "n": len(rows), "latency_ms": percentiles([r["ms"] for r in rows]),
                "server_stages_p50_ms": {s: round(statistics.median(
                    [r["timings"][s] for r in rows if s in r["timings"]]), 2) for s in stages},
                "passages_read": round(statistics.mean(r["passages"] for r in rows), 2),
                "windows_read": round(statistics.mean(r["windows"] for r in rows), 2),
                "read_pct": round(100 * statistics.mean(r["gold_read"] for r in rows), 1),
                "f1": round(100 * statistics.mean(r["f1"] for r in rows), 2),
                "modes": sorted({r["mode"] for r in rows})}
        return out


def row(client, pmap, set_name: str, ex, ms: float, status: int, body: dict) -> dict:
    from cluster.partitions import passage_id

    read = list(body.get("passages_read") or [])
    _em, f1 = score_answer(body.get("answer") or "", ex.answers)
    return {"set": set_name, "id": ex.id, "ms": round(ms, 2), "status": status,
            "cached": bool(body.get("cached")), "timings": body.get("timings_ms") or {},
            "passages": len(read), "windows": window_count(client, pmap, read),
            "gold_read": passage_id(ex.title, ex.paragraph_index) in read, "f1": f1,
            "mode": (body.get("retrieval") or {}).get("mode", "bm25")}


def window_count(client, pmap, pids: list[str]) -> int:
    return sum(int(client.hget(keys.index_windows(pmap.for_passage(p).tag), p) or 1)
               for p in pids)


def new_generation(client, settle_s: float = 0.3) -> None:
    """Every API's cached answers become stale (askers re-read the generation every
    0.25 s)."""
    client.incr(keys.generation())
    time.sleep(settle_s)


@click.command()
@click.option("--api", "apis", type=(str, str, int), multiple=True, required=True,
              metavar="NAME URL PID", help="an API to ask (several: alternating blocks)")
@click.option("--k", default=5, show_default=True, type=click.IntRange(1, 50))
@click.option("--dev-count", default=100, show_default=True, type=click.IntRange(0))
@click.option("--block", default=8, show_default=True, type=click.IntRange(1))
@click.option("--dev", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=corpus.DEV, show_default=True)
@click.option("--natural", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=NATURAL, show_default=True)
@click.option("--note", default="", help="what else ran on the machine, for the record")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@target_options
def main(apis, k, dev_count, block, dev, natural, note, out, target):
    """Uncached latency, stages, passages read and CPU per question of each API."""
    from cluster.connection import connect

    client = connect(target)
    pmap = partitions.load(client)
    sides = [Side(*a) for a in apis]
    questions = question_set(natural, dev, dev_count)
    load = [os.getloadavg()]
    for b, start in enumerate(range(0, len(questions), block)):
        chunk = questions[start:start + block]
        order = sides if b % 2 == 0 else sides[::-1]  # neither side always goes first
        for side in order:
            new_generation(client)
            side.ask_block(client, pmap, chunk, k)
        print(f"{start + len(chunk)}/{len(questions)}", flush=True)
    load.append(os.getloadavg())
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "k": k,
              "block": block, "loadavg_start_end": [[round(x, 2) for x in v] for v in load],
              "note": note, "apis": {s.name: s.summary() for s in sides}}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["apis"], indent=1))


if __name__ == "__main__":
    main()
