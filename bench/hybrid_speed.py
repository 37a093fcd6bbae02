"""What an uncached hybrid question costs through the API, stage by stage (issue 13).

Several deployments (e.g. the code before and after a change, each its own cluster, workers
and ``shardqa serve`` with the same corpus) answer the same questions in alternating blocks,
the answer cache invalidated before every block (the generation bumped), so each answer is
computed afresh and both sides see the same load. Per API: client latency, the server's
stage timings
(``timings_ms`` of each answer), passages and token windows read, the right passage among
those read and F1 (the questions have gold answers), and CPU time per question of the API
process, the shard workers and the Redis nodes (from /proc: wall times on a shared machine
are noisy, CPU seconds much less so).

    python -m bench.hybrid_speed api --api before URL PID DIR --api after URL PID DIR --out F
    python -m bench.hybrid_speed api --stack fp32 DIR1 --stack int8 DIR2 --out F  # shardqa up
    python -m bench.hybrid_speed embedding --out F   # passages per CPU second by cut, batch
    python -m bench.hybrid_speed question --out F    # a question on 1 or 2 torch threads
    python -m bench.hybrid_speed rank --dir DIR --out F  # the rank stage: before / after
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import click

from bench import corpus
from bench.retrieval_fusion import NATURAL
from bench.timing import ApiClient
from cluster import heartbeat, keys, partitions, routing
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
    """One deployment's answers and costs."""

    def __init__(self, name: str, url: str, pid: int, directory: str):
        from cluster.connection import Target, connect

        self.name, self.api, self.pid = name, ApiClient(url), pid
        self.client = connect(Target(directory=directory))  # admin: bumps the generation
        self.pmap = partitions.load(self.client)
        self.rows: list[dict] = []
        self.cpu = {"api": 0.0, "workers": 0.0, "redis": 0.0}

    def ask_block(self, block: list, k: int) -> None:
        client, pmap = self.client, self.pmap
        new_generation(client)
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


@click.group()
def main() -> None:
    """What hybrid asking and ingest cost, piece by piece (issue 13)."""


@main.command("api")
@click.option("--api", "apis", type=(str, str, int, str), multiple=True,
              metavar="NAME URL PID DIR",
              help="an API to ask, its PID and its local cluster folder (several: "
                   "alternating blocks)")
@click.option("--stack", "stacks", type=(str, click.Path(exists=True, file_okay=False)),
              multiple=True, metavar="NAME DIR",
              help="the same for the API of a 'shardqa up --dir DIR' stack (its URL and PID "
                   "from the stack's state)")
@click.option("--k", default=5, show_default=True, type=click.IntRange(1, 50))
@click.option("--dev-count", default=100, show_default=True, type=click.IntRange(0))
@click.option("--block", default=8, show_default=True, type=click.IntRange(1))
@click.option("--dev", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=corpus.DEV, show_default=True)
@click.option("--natural", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=NATURAL, show_default=True)
@click.option("--note", default="", help="what else ran on the machine, for the record")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def api_command(apis, stacks, k, dev_count, block, dev, natural, note, out):
    """Uncached latency, stages, passages read and CPU per question of each API."""
    apis = [*apis, *(stack_api(name, directory) for name, directory in stacks)]
    if not apis:
        raise click.UsageError("give at least one --api or --stack")
    sides = [Side(*a) for a in apis]
    questions = question_set(natural, dev, dev_count)
    load = [os.getloadavg()]
    for b, start in enumerate(range(0, len(questions), block)):
        chunk = questions[start:start + block]
        order = sides if b % 2 == 0 else sides[::-1]  # neither side always goes first
        for side in order:
            side.ask_block(chunk, k)
        print(f"{start + len(chunk)}/{len(questions)}", flush=True)
    load.append(os.getloadavg())
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "k": k,
              "block": block, "loadavg_start_end": [[round(x, 2) for x in v] for v in load],
              "note": note, "apis": {s.name: s.summary() for s in sides}}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["apis"], indent=1))


def stack_api(name: str, directory: str) -> tuple[str, str, int, str]:
    """(NAME, URL, PID, DIR) of the API a ``shardqa up --dir DIR`` stack runs."""
    from shardqa.stack import LocalStack

    api = LocalStack(directory).state().get("api") or {}
    if not (api.get("url") and api.get("pid")):
        raise click.BadParameter(f"{directory}: the stack runs no API", param_hint="--stack")
    return name, api["url"], int(api["pid"]), directory


# --- the pieces, in process (CPU time: the machine is shared) ------------------------------

@main.command("embedding")
@click.option("--passages", "count", default=300, show_default=True, type=click.IntRange(8))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def embedding_command(count, out):
    """Passages embedded per CPU second (int8, 1 thread) by token cut and batch size, and
    how close each cut's vectors stay to the encoder's own 256-token ones."""
    import numpy as np
    import torch

    from bench.retrieval_fusion import corpus_passages, load_encoder
    from models.default import default_encoder_artifact
    from models.encoder import passage_input

    torch.set_num_threads(1)
    artifact = default_encoder_artifact()
    passages = corpus_passages()
    picked = np.random.default_rng(0).choice(len(passages), size=count, replace=False)
    texts = [passage_input(passages[i].title, passages[i].text) for i in picked]
    rows, vectors = {}, {}
    for cut, batch in ((256, 32), (256, 8), (128, 64), (128, 32), (128, 8)):
        encoder = load_encoder(artifact, "int8", 1, max_seq_len=cut, max_batch=batch)
        encoder.warm_up()
        runs = [_cpu_timed(encoder.embed, texts) for _ in range(2)]  # the better one counts
        vectors[(cut, batch)] = runs[0][0]
        seconds = min(s for _, s in runs)
        rows[f"cut {cut}, batch {batch}"] = {"passages_per_cpu_s": round(count / seconds, 1)}
    for (cut, batch), v in vectors.items():
        cosine = (v * vectors[(256, 32)]).sum(axis=1)
        rows[f"cut {cut}, batch {batch}"]["cosine_to_256"] = {
            "mean": round(float(cosine.mean()), 4), "min": round(float(cosine.min()), 4)}
    tokens = [len(ids) for ids in load_encoder(artifact, "int8", 1).token_ids(texts)]
    _write(out, {"passages": count, "artifact": artifact.name, "variant": "int8",
                 "threads": 1, "mean_tokens_at_256": round(float(np.mean(tokens)), 1),
                 "share_over_128_tokens": round(float(np.mean([t > 128 for t in tokens])), 3),
                 "rows": rows})


@main.command("question")
@click.option("--questions", "count", default=100, show_default=True, type=click.IntRange(4))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def question_command(count, out):
    """One question embedded (int8) on 1 or 2 torch threads, alternately: wall and CPU ms.
    (How torch's idle OpenMP threads wait is bench/openmp_spin.py's.)"""
    _write(out, {"question_embedding": question_threads(count)})


def question_threads(count: int) -> dict:
    """Wall and CPU ms (p50) of embedding one question, on 1 and on 2 torch threads."""
    import torch

    from bench.retrieval_fusion import load_encoder
    from models.default import default_encoder_artifact

    encoder = load_encoder(default_encoder_artifact(), "int8")
    encoder.warm_up()
    questions = [ex.question for _, ex in question_set(NATURAL, corpus.DEV, count)][:count]
    out = {}
    for threads in (2, 1, 2, 1):
        torch.set_num_threads(threads)
        wall, cpu = [], []
        for q in questions:
            t0, c0 = time.perf_counter(), time.process_time()
            encoder.embed([q])
            wall.append(1000 * (time.perf_counter() - t0))
            cpu.append(1000 * (time.process_time() - c0))
        out.setdefault(f"{threads} threads", []).append(
            {"wall_ms_p50": round(statistics.median(wall), 2),
             "cpu_ms_p50": round(statistics.median(cpu), 2)})
    return out


@main.command("fanout")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="a local cluster folder with a hybrid corpus")
@click.option("--questions", "count", default=100, show_default=True, type=click.IntRange(4))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def fanout_command(directory, count, out):
    """The round trip that carries BM25 rank and VSIM of every partition, with VSIM in a
    Redis background thread (its default) or in the main thread (NOTHREAD), alternately on
    the same questions; and whether the fused top 5 ever differ."""
    from cluster.connection import Target, connect
    from gears import retrieval

    client = connect(Target(directory=directory, role="api"))
    pmap = partitions.load(client)
    encoder = retrieval.QuestionEncoder(client, threads=retrieval.QUESTION_THREADS)
    plan = encoder.current(pmap)
    if plan is None:
        raise click.ClickException(f"the cluster cannot rank hybrid: {encoder.why}")
    times: dict[str, list[float]] = {"threaded": [], "NOTHREAD": []}
    differ = 0
    for _, ex in question_set(NATURAL, corpus.DEV, count)[:count]:
        vectors = encoder.embed(ex.question, plan)
        tops = {}
        for mode in (("threaded", "NOTHREAD") if len(times["threaded"]) % 2
                     else ("NOTHREAD", "threaded")):
            t0 = time.perf_counter()
            found = _fanout(client, pmap, ex.question, plan, vectors, mode == "NOTHREAD")
            times[mode].append(1000 * (time.perf_counter() - t0))
            tops[mode] = [(f.pid, f.score) for f in found.passages]
        differ += tops["threaded"] != tops["NOTHREAD"]
    _write(out, {"questions": count, "masters": len(client.get_primaries()),
                 "partitions": len(pmap.partitions), "fused_top5_differing": differ,
                 "round_trip_ms_p50": {m: round(statistics.median(v), 2)
                                       for m, v in times.items()}})


def _fanout(client, pmap, question, plan, vectors, nothread: bool):
    """retrieval.hybrid with VSIM in Redis' main thread, or in its background thread."""
    from gears import dense, retrieval

    shipped = dense.VectorQuery.options
    dense.VectorQuery.options = ("NOTHREAD",) if nothread else ()
    try:
        return retrieval.hybrid(client, pmap, question, 5, plan, vectors)
    finally:
        dense.VectorQuery.options = shipped


@main.command("rank")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="a local cluster folder with a hybrid corpus")
@click.option("--questions", "count", default=0, type=click.IntRange(0),
              help="the first N questions (natural, then SQuAD dev in file order) [default: "
                   "all 1,131]")
@click.option("--depth", default=None, type=click.IntRange(1),
              help="candidates per partition in the first round trip [default: shipped]")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def rank_command(directory, count, depth, out):
    """Hybrid retrieval (question embedded beforehand) as before (100 candidates of each
    retriever from every partition, every reply pair a Ranked) and as shipped (``depth``
    first, a second round trip where a partition may hold more), alternately: wall ms of
    its parts, Redis' command time, second round trips, and whether the fused top 100
    (hence every top k) differs anywhere. The "before" side's wall time is also split: the
    round trips (stats fan-out excluded), parsing the replies into the best 100 of each list,
    fusing them."""
    from cluster.connection import Target, connect
    from gears import retrieval
    from gears.asker import normalize
    from shardqa import datasets

    depth = depth or retrieval.PARTITION_DEPTH
    client = connect(Target(directory=directory, role="api"))
    admin = connect(Target(directory=directory))  # INFO commandstats
    pmap = partitions.load(client)
    encoder = retrieval.QuestionEncoder(client, threads=retrieval.QUESTION_THREADS)
    plan = encoder.current(pmap)
    if plan is None:
        raise click.ClickException(f"the cluster cannot rank hybrid: {encoder.why}")
    sets = {"natural": read_squad(datasets.NATURAL_DEV),
            "squad-dev": [e for e in read_squad(datasets.SQUAD_DEV) if e.has_answer]}
    asked = [(name, normalize(e.question)) for name, xs in sets.items() for e in xs]
    asked = asked[:count] if count else asked
    vectors = {q: encoder.embed(q, plan) for _, q in asked}
    sides = {"before": lambda q: _before(client, pmap, q, plan, vectors[q]),
             "after": lambda q: _after(client, pmap, q, plan, vectors[q], depth)}
    wall = {side: [] for side in sides}
    server: dict[str, Counter] = {side: Counter() for side in sides}
    parts: dict[str, list[float]] = {"round_trips": [], "parse": [], "fuse": []}
    differ: dict[str, list[str]] = {name: [] for name in sets}
    deeper = 0
    for i, (name, q) in enumerate(asked):
        tops = {}
        for side in (("before", "after") if i % 2 else ("after", "before")):
            us = _command_us(admin)
            t0 = time.perf_counter()
            tops[side], extra = sides[side](q)
            wall[side].append(1000 * (time.perf_counter() - t0))
            server[side].update(_command_us(admin) - us)
            if side == "after":
                deeper += extra
            else:
                for part, ms in extra.items():
                    parts[part].append(ms)
        if tops["before"] != tops["after"]:
            differ[name].append(q)
    _write(out, {
        "questions": {name: sum(n == name for n, _ in asked) for name in sets},
        "masters": len(client.get_primaries()), "partitions": len(pmap.partitions),
        "candidates": retrieval.fusion.CANDIDATES, "depth": depth,
        "fused_top100_differing": {name: len(qs) for name, qs in differ.items()},
        "differing_questions": differ,
        "questions_with_a_second_round_trip": deeper,
        "wall_ms_p50": {s: round(statistics.median(v), 2) for s, v in wall.items()},
        "wall_ms_mean": {s: round(statistics.fmean(v), 2) for s, v in wall.items()},
        "before_parts_ms_p50": {part: round(statistics.median(v), 2)
                                for part, v in parts.items()},
        "redis_command_ms_per_question": {
            s: {name: round(us / 1000 / len(asked), 2) for name, us in sorted(v.items())}
            for s, v in server.items()}})


def _before(client, pmap, question, plan, vectors):
    """retrieval.hybrid as it was: 100 of each list from every partition, all parsed."""
    from gears import dense, fusion, ranking

    queries = {e: dense.VectorQuery(dense.vector_blob(v), fusion.CANDIDATES)
               for e, v in vectors.items()}
    rank = ranking.prepare(client, pmap, question, fusion.CANDIDATES)

    def build(pipe, p) -> None:
        if rank is not None:
            rank.queue(pipe, p)
        pipe.hget(keys.vector_meta(p.tag), keys.VECTOR_ENCODER)
        queries[plan.partitions[p.index]].queue(pipe, p)
        pipe.hget(keys.vector_meta(p.tag), keys.VECTOR_ENCODER)

    bm25, dns = [], []
    t0 = time.perf_counter()
    replied = routing.per_master(client, pmap.partitions, build, many=True)
    t1 = time.perf_counter()
    for index, replies in replied.items():
        if rank is not None:
            bm25 += ranking.parse(index, replies[0])
        dns += dense.parse(index, replies[-2])
    bm25, dns = ranking.best(bm25, fusion.CANDIDATES), ranking.best(dns, fusion.CANDIDATES)
    t2 = time.perf_counter()
    fused = fusion.fuse(bm25, dns)
    t3 = time.perf_counter()
    ms = {"round_trips": 1000 * (t1 - t0), "parse": 1000 * (t2 - t1), "fuse": 1000 * (t3 - t2)}
    return [(f.pid, f.score, f.ranks) for f in fused[:fusion.CANDIDATES]], ms


def _after(client, pmap, question, plan, vectors, depth):
    """retrieval.hybrid as shipped; (fused top 100, 1 if it took a second round trip)."""
    from gears import fusion, retrieval

    fetches = []
    shipped = retrieval._Found.fetch

    def counted(self, *args, **kwargs):
        fetches.append(1)
        return shipped(self, *args, **kwargs)

    retrieval._Found.fetch = counted
    try:
        found = retrieval.hybrid(client, pmap, question, fusion.CANDIDATES, plan, vectors,
                                 depth=depth)
    finally:
        retrieval._Found.fetch = shipped
    return [(f.pid, f.score, f.ranks) for f in found.passages], int(len(fetches) > 1)


def _command_us(admin) -> Counter:
    """Microseconds Redis spent in FCALL_RO (BM25 stats and rank), VSIM and HGET (the
    encoder checks), summed over every master."""
    total: Counter = Counter()
    for node in admin.get_primaries():
        stats = admin.get_redis_connection(node).info("commandstats")
        for name in ("fcall_ro", "VSIM", "hget"):
            total[name.lower()] += stats.get(f"cmdstat_{name}", {}).get("usec", 0)
    return total


def _cpu_timed(work, *args):
    """(work(*args), CPU seconds it took this process)."""
    c0 = time.process_time()
    result = work(*args)
    return result, time.process_time() - c0


def _write(out: Path, result: dict) -> None:
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "loadavg": [round(x, 2) for x in os.getloadavg()], **result}
    out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
