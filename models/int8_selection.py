"""Which Linear layers the int8 reader keeps in fp32: measured on a dev file, per checkpoint.

Dynamic int8 loses some dev F1 (the bundled reader: -1.10 against the goal of 1). The loss is
not spread evenly: a few layers (those with activation outliers) cost most of it. This ranks
every quantized Linear by how much of the int8 model's divergence from fp32 (KL of the
start/end distributions on dev windows) disappears when that one layer stays fp32, then adds
layers in that order, scoring dev F1 in reader mode after each, until int8 is within the
budget of fp32. The choice is written beside the checkpoint (``INT8_CHOICE``), where
``shardqa model export --int8`` reads its default. Run it again when the weights change.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path

import torch

from models.export import (
    INT8_CHOICE,
    MAX_QUESTION_TOKENS,
    ExportError,
    QAOutputs,
    int8_candidates,
    quantize_int8,
    resolve_source,
    takes_token_types,
)
from models.squad import SquadExample, read_squad

SEQ_LEN = 384


def _reader(module, tokenizer):
    from models.reader import Reader

    return Reader(module, tokenizer, max_seq_len=SEQ_LEN,
                  max_question_tokens=MAX_QUESTION_TOKENS)


def dev_f1(module, tokenizer, examples: list[SquadExample]) -> float:
    """Reader-mode dev F1 (each question with its own paragraph), as ``shardqa eval``."""
    from models.evaluation import evaluate_reader

    results = evaluate_reader(examples, _reader(module, tokenizer), progress=False)
    return 100.0 * sum(r.f1 for r in results) / len(results)


def sample_batches(tokenizer, examples: list[SquadExample]) -> list[tuple]:
    """The (ids, mask, types) batches the reader runs for these questions' windows."""
    from models.tokenization import DEFAULT_STRIDE, tokenize_passages, window_token_budget

    reader = _reader(None, tokenizer)
    window = window_token_budget(SEQ_LEN, MAX_QUESTION_TOKENS, reader.layout.special_tokens)
    contexts = list(dict.fromkeys(e.context for e in examples))
    tokens = dict(zip(contexts, tokenize_passages(reader.tokenizer, contexts, window,
                                                        DEFAULT_STRIDE),
                      strict=True))
    pairs = reader._pairs([(e.question, [(e.context, tokens[e.context])]) for e in examples])
    return [reader.encode_batch(batch) for batch in reader._batches(pairs)]


def log_probs(module, batches: list[tuple]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Log-softmax of the start and end logits over each window's real tokens."""
    out = []
    with torch.inference_mode():
        for ids, mask, types in batches:
            start, end = module(ids, mask, types)
            pad = ~mask.bool()
            out.append(tuple(torch.log_softmax(x.float().masked_fill(pad, -1e4), dim=-1)
                             for x in (start, end)))
    return out


def divergence(reference: list, module, batches: list[tuple]) -> float:
    """Mean KL(fp32 || module) of the start plus end distributions over the sample windows."""
    total = count = 0.0
    for (ref_s, ref_e), (got_s, got_e) in zip(reference, log_probs(module, batches),
                                               strict=True):
        for ref, got in ((ref_s, got_s), (ref_e, got_e)):
            total += float((ref.exp() * (ref - got)).sum())
        count += ref_s.shape[0]
    return total / max(count, 1)


def rank_layers(model, with_types: bool, batches: list[tuple],
                say: Callable[[str], None]) -> list[tuple[str, float]]:
    """(layer, divergence removed by keeping it fp32), most sensitive first."""
    reference = log_probs(QAOutputs(model, with_types), batches)
    base = divergence(reference, QAOutputs(quantize_int8(model), with_types), batches)
    gains = []
    for name in int8_candidates(model):
        kept = divergence(reference, QAOutputs(quantize_int8(model, [name]), with_types),
                          batches)
        gains.append((name, base - kept))
        say(f"  {name}: divergence {kept:.4f} (all int8: {base:.4f})")
    return sorted(gains, key=lambda g: -g[1])


def select(source: str | Path, dev: str | Path, *, budget: float = 1.0, sample: int = 300,
           max_layers: int = 8, fp32_f1: float | None = None,
           log: Callable[[str], None] | None = None) -> dict:
    """Rank the layers, then keep in fp32, most sensitive first, those that raise int8's dev F1
    until it is within ``budget`` of fp32's (``fp32_f1``: already known, not scored again).
    Returns the record ``write_choice`` stores."""
    from models.export import _load, _quiet_libraries

    say = log or (lambda _msg: None)
    resolved, local = resolve_source(source)
    examples = read_squad(dev)
    with _quiet_libraries():
        model, tokenizer, _random = _load(resolved, local)
        with_types = takes_token_types(model)
        if fp32_f1 is None:
            say(f"fp32 dev F1 on {len(examples)} questions")
        fp32 = fp32_f1 if fp32_f1 is not None else dev_f1(QAOutputs(model, with_types),
                                                          tokenizer, examples)
        say(f"fp32 F1 {fp32:.2f}; ranking layers on {min(sample, len(examples))} questions")
        ranking = rank_layers(model, with_types, sample_batches(tokenizer, examples[:sample]),
                              say)
        steps = greedy([n for n, _gain in ranking[:max_layers]], fp32, budget,
                       lambda keep: dev_f1(QAOutputs(quantize_int8(model, keep), with_types),
                                           tokenizer, examples), say)
    best = [st for st in steps if st["kept"]][-1]  # F1 rises along the kept steps
    reached = fp32 - best["f1"] <= budget
    return {"keep_fp32": best["keep_fp32"] if reached else [],
            "reached": reached, "budget_f1": budget, "dev": str(dev), "questions": len(examples),
            "fp32_f1": fp32, "steps": steps,
            "ranking": [{"layer": n, "divergence_removed": g} for n, g in ranking],
            "date": datetime.date.today().isoformat()}


def greedy(ranked: list[str], fp32: float, budget: float,
           score: Callable[[list[str]], float],
           say: Callable[[str], None] = lambda _msg: None) -> list[dict]:
    """Try the layers in ranked order, each added to the best set so far and kept only if it
    raises dev F1 (a layer whose fp32 copy makes F1 worse is dropped, not carried on), until
    int8 is within ``budget`` of fp32. One step per set scored; all-int8 first."""
    steps: list[dict] = []
    best: list[str] = []
    best_f1 = float("-inf")
    for name in [None, *ranked]:
        trial = [*best, name] if name else best
        f1 = score(trial)
        kept = f1 > best_f1
        steps.append({"keep_fp32": list(trial), "f1": f1, "kept": kept})
        say(f"int8 keeping {len(trial)} fp32: F1 {f1:.2f} ({f1 - fp32:+.2f})"
            f"{'' if kept else ', not kept'}")
        if kept:
            best, best_f1 = trial, f1
        if fp32 - best_f1 <= budget:
            break
    return steps


def write_choice(source: str | Path, record: dict) -> Path:
    """Store the record beside the checkpoint, where export reads its default."""
    folder = Path(source)
    if not (folder / "config.json").is_file():
        raise ExportError(f"{source}: not a local checkpoint folder; cannot store the choice")
    path = folder / INT8_CHOICE
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path
