"""Each speed option of the reader, measured in the bench process against its alternative,
with its quality cost on SQuAD dev beside it.

* quality (reader mode): every question read against its own gold paragraph, EM/F1 per
  variant (fp32, int8), as ``shardqa eval --mode reader`` does;
* speed per option, one question at a time on the same k candidates from the cluster's rank
  (what a worker does at concurrency 1), options interleaved question by question so load
  from other processes hits them alike: padded to max_seq_len vs length-bucketed batches,
  fp32 vs int8, reading every candidate vs skipping low-ranked ones; end-to-end EM/F1 of
  each against the gold answers;
* smaller checks: question tokenized once vs once per pair, warm-up at load, threads per
  worker, fast bf16 on this CPU.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.reader_forward import matmul_gflops
from cluster import keys
from cluster.partitions import PartitionMap
from gears import ranking
from gears.asker import MIN_RANK_RATIO, RETRIEVAL_WEIGHT, answer_score, normalize
from models.artifact import load_reader as artifact_reader
from models.artifact import read_artifact
from models.evaluation import evaluate_reader, summarize
from models.export import sample_inputs
from models.reader import Reader, special_ids
from models.squad import SquadExample, score_answer
from models.tokenization import (
    DEFAULT_STRIDE,
    PassageTokens,
    window_token_budget,
)
from models.variants import FAST_BF16_FLAGS, cpu_flags, fast_bf16

STRIDE = DEFAULT_STRIDE  # the worker's window overlap for an artifact that names none
SKIP_RATIO = MIN_RANK_RATIO  # the asker skips candidates below this share of the best score


class PaddedReader(Reader):
    """The alternative to length-bucketed batches: every pair padded to max_seq_len."""

    def encode_batch(self, batch):
        ids, mask, types = super().encode_batch(batch)
        extra = self.max_seq_len - ids.shape[1]
        if extra > 0:
            pad = torch.nn.functional.pad
            ids = pad(ids, (0, extra), value=self.layout.pad_id)
            mask, types = pad(mask, (0, extra)), pad(types, (0, extra))
        return ids, mask, types


def load_reader(artifact: Path, variant: str, threads: int, padded: bool = False) -> Reader:
    """The artifact's reader (models.artifact, as ``shardqa eval``), warmed up."""
    reader, _ = artifact_reader(artifact, variant=variant, threads=threads,
                                reader_class=PaddedReader if padded else Reader)
    reader.warm_up()
    return reader


def _window_tokens(reader: Reader) -> int:
    return window_token_budget(reader.max_seq_len, reader.max_question_tokens,
                               reader.layout.special_tokens)


# --- quality: reader mode on gold paragraphs ------------------------------------------------

def reader_quality(artifact: Path, examples: list[SquadExample], variants: list[str],
                   threads: int, progress: bool = False) -> dict:
    """EM/F1 per variant, each question read against its gold paragraph: the reader mode of
    ``shardqa eval`` (models.evaluation), so the bench and eval report the same score."""
    out = {}
    for variant in variants:
        reader, description = artifact_reader(artifact, variant=variant, threads=threads)
        t0 = time.perf_counter()
        results = evaluate_reader(examples, reader, stride=STRIDE, progress=progress)
        summary = summarize(results, file="dev", mode="reader", model=description)
        out[variant] = {"exact_match": round(summary.exact_match, 2),
                        "f1": round(summary.f1, 2), "count": summary.count,
                        "seconds": round(time.perf_counter() - t0, 2),
                        "read_latency_ms": {k: round(v, 2)
                                            for k, v in summary.latency_ms.items()}}
    if "fp32" in out:
        for row in out.values():
            row["f1_delta_vs_fp32"] = round(row["f1"] - out["fp32"]["f1"], 2)
    return out


# --- speed per option on ranked candidates ---------------------------------------------------

def candidates(client, pmap: PartitionMap, examples: list[SquadExample], k: int
               ) -> list[list[tuple[float, str, PassageTokens]]]:
    """For each question: (BM25 score, text, stored tokens) of its top k, best first."""
    out = []
    for e in examples:
        ranked = ranking.rank(client, pmap, normalize(e.question), k)
        pipe = client.pipeline(transaction=False)
        for r in ranked:
            pipe.hmget(keys.passage(pmap.for_passage(r.pid).tag, r.pid),
                       ["text", "tok_ids", "tok_offs", "tok_wins"])
        found = []
        for r, (text, ids, offs, wins) in zip(ranked, pipe.execute() if ranked else [],
                                              strict=True):
            tokens = PassageTokens.unpack({"tok_ids": ids, "tok_offs": offs, "tok_wins": wins}) \
                if ids is not None else None
            if text is not None and tokens is not None:
                found.append((r.score, text.decode("utf-8"), tokens))
        out.append(found)
    return out


def option_speed(artifact: Path, examples: list[SquadExample],
                 cands: list[list[tuple[float, str, PassageTokens]]], threads: int,
                 with_int8: bool, progress=None) -> list[dict]:
    """Per option: latency of one question's read, windows read, end-to-end EM/F1."""
    fp32 = load_reader(artifact, "fp32", threads)
    options = {
        "fp32, padded to max_seq_len": (load_reader(artifact, "fp32", threads, padded=True),
                                        False),
        "fp32, length-bucketed, all k read": (fp32, False),
        f"fp32 + skip candidates < {SKIP_RATIO:g} x best rank score (shipped)": (fp32, True),
    }
    if with_int8:
        int8 = load_reader(artifact, "int8", threads)
        options["int8 per-channel, length-bucketed"] = (int8, False)
        options[f"int8 + skip candidates < {SKIP_RATIO:g} x best rank score"] = (int8, True)
    names = list(options)
    times = {n: [] for n in names}
    windows = {n: [] for n in names}
    scores = {n: [] for n in names}
    texts: dict[str, list[str | None]] = {n: [] for n in names}  # each question's answer
    for qi, (e, found) in enumerate(zip(examples, cands, strict=True)):
        if not found:
            for n in names:
                scores[n].append((0.0, 0.0))
                texts[n].append(None)
            continue
        for n in names[qi % len(names):] + names[:qi % len(names)]:
            reader, skip = options[n]
            use = found
            if skip:
                top = found[0][0]
                use = [c for c in found if c[0] >= SKIP_RATIO * top]
            t0 = time.perf_counter()
            spans = reader.read_many([(e.question, [(t, tok) for _s, t, tok in use])])[0]
            times[n].append((time.perf_counter() - t0) * 1000)
            windows[n].append(sum(len(tok.windows) for _s, _t, tok in use))
            # merged as the asker merges: span score plus the passage's relative BM25
            top = found[0][0]
            merged = [(answer_score(s.score, c[0], top, RETRIEVAL_WEIGHT), s)
                      for s, c in zip(spans, use, strict=True) if s is not None]
            best = max(merged, key=lambda m: m[0], default=(0.0, None))[1]
            scores[n].append(score_answer(best.text if best else "", e.answers))
            texts[n].append(best.text if best else None)
        if progress:
            progress(1)
    rows = []
    for n in names:
        em = [s[0] for s in scores[n]]
        f1 = [s[1] for s in scores[n]]
        rows.append({"option": n, "p50_ms": round(statistics.median(times[n]), 2),
                     "mean_ms": round(float(np.mean(times[n])), 2),
                     "mean_windows": round(float(np.mean(windows[n])), 2),
                     "exact_match": round(100 * float(np.mean(em)), 2),
                     "f1": round(100 * float(np.mean(f1)), 2), "questions": len(f1)})
    base = next(r for r in rows if r["option"].startswith("fp32, length"))
    for r in rows:
        r["speedup_vs_fp32_all_k"] = round(base["p50_ms"] / r["p50_ms"], 2)
        r["f1_delta_vs_fp32_all_k"] = round(r["f1"] - base["f1"], 2)
        # answers compared, not only F1: equal F1 can hide different answers
        r["same_answers_as_fp32_all_k"] = sum(
            a == b for a, b in zip(texts[r["option"]], texts[base["option"]], strict=True))
    return rows


# --- smaller checks ----------------------------------------------------------------------------

def question_tokenization(reader: Reader, examples: list[SquadExample],
                          pairs_per_question: float, shipped_pairs: float | None = None) -> dict:
    """What tokenizing the question once per question (not once per pair) saves: one
    tokenization per pair after the first, at ``pairs_per_question`` (every candidate read)
    and at ``shipped_pairs`` (the pairs the shipped candidate floor leaves)."""
    times = []
    for e in examples:
        t0 = time.perf_counter()
        reader.question_ids(e.question)
        times.append((time.perf_counter() - t0) * 1e6)
    per = statistics.median(times)
    out = {"question_tokenize_us": round(per, 1), "pairs_per_question": pairs_per_question,
           "saved_us_per_question": round(per * max(0.0, pairs_per_question - 1), 1)}
    if shipped_pairs is not None:
        out["shipped_pairs_per_question"] = shipped_pairs
        out["shipped_saved_us_per_question"] = round(per * max(0.0, shipped_pairs - 1), 1)
    return out


def _sample_inputs(tokenizer, pairs: int = 5, length: int = 190):
    """A k=5-like batch: 5 pairs of 190 tokens (question + a typical passage)."""
    vocab = tokenizer.get_vocab_size()
    ids, mask, types = sample_inputs(vocab, special_ids(tokenizer), pairs, length, seed=3)
    mask[:] = 1
    return ids, mask, types


def _timed_calls(module, inputs, calls: int) -> list[float]:
    times = []
    with torch.inference_mode():
        for _ in range(calls):
            t0 = time.perf_counter()
            module(*inputs)
            times.append((time.perf_counter() - t0) * 1000)
    return times


def warm_up_effect(artifact: Path, variant: str, threads: int) -> dict:
    """First calls of a freshly loaded TorchScript reader vs its steady state: what the
    worker's warm-up at load keeps away from the first questions."""
    torch.set_num_threads(threads)
    module, tokenizer, _ = read_artifact(artifact, variant)
    calls = _timed_calls(module, _sample_inputs(tokenizer), 8)
    steady = statistics.median(calls[3:])
    return {"variant": variant, "batch": "5 pairs x 190 tokens",
            "first_ms": round(calls[0], 1), "second_ms": round(calls[1], 1),
            "steady_ms": round(steady, 1), "first_call_penalty_ms": round(calls[0] - steady, 1)}


def thread_scaling(artifact: Path, variant: str, runs: int = 7) -> dict:
    """Forward time of one k=5 batch at 1 and 2 threads. Two 1-thread workers read two
    batches at once; one 2-thread worker gains only this speedup on one."""
    module, tokenizer, _ = read_artifact(artifact, variant)
    inputs = _sample_inputs(tokenizer)
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        times = _timed_calls(module, inputs, runs + 2)[2:]
        out[f"{threads}_thread_ms"] = round(statistics.median(times), 1)
    out["speedup_2_threads"] = round(out["1_thread_ms"] / out["2_thread_ms"], 2)
    out["variant"] = variant
    return out


def bf16_check(threads: int) -> dict:
    """Fast bf16 needs AMX or AVX512-BF16; without them bf16 matmul is emulated (slower
    than fp32), so the reader stays fp32/int8. Measured, not assumed."""
    flags = cpu_flags()
    fast = fast_bf16(flags)  # the rule --reader-variant auto follows
    fp32 = matmul_gflops(threads, n=512, runs=3)
    bf16 = matmul_gflops(threads, n=512, runs=3, dtype=torch.bfloat16)  # slow if emulated
    return {"cpu_bf16_flags": sorted(flags & (FAST_BF16_FLAGS | {"amx_tile"})),
            "fast_bf16": fast,
            "matmul_fp32_gflops": fp32["median_gflops"],
            "matmul_bf16_gflops": bf16["median_gflops"],
            "decision": ("fast bf16: --reader-variant auto serves the bf16 reader" if fast
                         else "no fast bf16 on this CPU: auto serves the fp32 reader")}
