"""Export a sentence encoder (a sentence-transformers folder or a bare base model such as
``BertModel``) to a TorchScript encoder artifact, fp32 and int8.

The traced module includes the pooling and the L2 norm the model's own sentence-transformers
config names (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``),
so the runtime (models/encoder.py) only tokenizes and pads. The artifact has the reader's
layout (models/export.py: TorchScript files, tokenizer.json, shardqa-model.json with
``kind: encoder``) and the same gate: nothing is written unless the traced fp32 module
agrees with the eager one on padded batches, and the int8 one stays close to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from models.export import (
    FP32_TOLERANCE,
    PARITY_SHAPES,
    ExportError,
    check_name,
    check_out,
    fast_tokenizer,
    quantize_int8,
    resolve_source,
    sample_inputs,
    trace,
    write_artifact,
)
from models.reader import special_ids

VARIANT_FILES = {"fp32": "encoder.pt", "int8": "encoder-int8.pt"}
#: pooling -> its flag in a sentence-transformers Pooling config
POOLINGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
            "max": "pooling_mode_max_tokens"}
DEFAULT_MAX_SEQ_LEN = 256
#: The int8 variant is written only if every parity embedding keeps at least this cosine
#: to its fp32 twin (MiniLM-L6 per-channel int8 keeps about 0.99).
INT8_MIN_COSINE = 0.9


class _Embeddings(torch.nn.Module):
    """Transformer -> pooling over real tokens -> optional L2 norm: [batch, dim]."""

    def __init__(self, model: torch.nn.Module, pooling: str, normalize: bool):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled


def sentence_config(folder: Path | None) -> dict:
    """pooling, normalize and max_seq_len from a sentence-transformers folder; mean pooling,
    L2 norm and 256 tokens for a bare base model (what sentence-transformers would build)."""
    found = {"pooling": "mean", "normalize": True, "max_seq_len": DEFAULT_MAX_SEQ_LEN,
             "config": "default"}
    modules_file = folder / "modules.json" if folder else None
    if modules_file is None or not modules_file.is_file():
        return found
    modules = _json(modules_file)
    found["config"] = "sentence-transformers"
    found["normalize"] = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    pooling = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    if pooling is not None and (folder / pooling.get("path", "") / "config.json").is_file():
        conf = _json(folder / pooling["path"] / "config.json")
        modes = [mode for mode, flag in POOLINGS.items() if conf.get(flag)]
        if len(modes) != 1 or conf.get("pooling_mode_mean_sqrt_len_tokens"):
            raise ExportError(f"{folder}: pooling {conf} is not one of {', '.join(POOLINGS)}")
        found["pooling"] = modes[0]
    if (folder / "sentence_bert_config.json").is_file():
        limit = _json(folder / "sentence_bert_config.json").get("max_seq_length")
        if limit:
            found["max_seq_len"] = int(limit)
    return found


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path} is unreadable: {exc}") from exc


def _load(source: str, local: bool) -> torch.nn.Module:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no load report of the unused pooler weights
    hf_logging.disable_progress_bar()
    try:
        try:  # the pooler layer is never used: leave it out where the model allows it
            model = AutoModel.from_pretrained(source, local_files_only=local, return_dict=False,
                                              dtype=torch.float32, add_pooling_layer=False)
        except TypeError:
            model = AutoModel.from_pretrained(source, local_files_only=local, return_dict=False,
                                              dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ExportError(f"cannot load a sentence encoder from {source}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
                          ) from exc
    return model.eval()


def embedding_parity(reference: Callable, candidate: Callable, inputs: list) -> dict:
    """Max |difference| and the lowest / mean cosine between two encoders' embeddings."""
    worst, cosines = 0.0, []
    with torch.inference_mode():
        for ids, mask, types in inputs:
            a, b = reference(ids, mask, types), candidate(ids, mask, types)
            worst = max(worst, float((a - b).abs().max()))
            cosines += torch.nn.functional.cosine_similarity(a, b, dim=1).tolist()
    return {"max_abs_diff": worst, "min_cosine": min(cosines),
            "mean_cosine": sum(cosines) / len(cosines), "rows": len(cosines)}


def export_encoder(source: str | Path, name: str, out: Path, *, int8: bool = False,
                   max_seq_len: int | None = None,
                   log: Callable[[str], None] | None = None) -> Path:
    """Trace the sentence encoder SOURCE, check parity, write the artifact folder ``out``."""
    say = log or (lambda _msg: None)
    check_name(name)
    out = check_out(out)
    resolved, local = resolve_source(source)
    conf = sentence_config(Path(resolved) if local else None)
    say(f"loading {resolved} ({conf['pooling']} pooling, "
        f"{'L2-normalized' if conf['normalize'] else 'not normalized'})")
    model, tokenizer = _load(resolved, local), fast_tokenizer(resolved, local)
    limit = int(getattr(model.config, "max_position_embeddings", 512))
    max_seq_len = int(max_seq_len or min(conf["max_seq_len"], limit))
    if not 8 <= max_seq_len <= limit:
        raise ExportError(f"--max-seq-len must be in [8, {limit}] for this model, got "
                          f"{max_seq_len}")
    specials, vocab = special_ids(tokenizer), int(model.config.vocab_size)
    inputs = [_single_segment(sample_inputs(vocab, specials, b, min(n or max_seq_len,
                                                                    max_seq_len), seed=i))
              for i, (b, n) in enumerate(PARITY_SHAPES)]
    example = _single_segment(sample_inputs(vocab, specials, 2, 16, seed=99))
    wrapper = _Embeddings(model, conf["pooling"], conf["normalize"]).eval()
    traced = trace(wrapper, example)
    report = {"fp32": embedding_parity(wrapper, traced, inputs), "tolerance": FP32_TOLERANCE}
    say(f"fp32 parity: max |diff| {report['fp32']['max_abs_diff']:.3g}")
    if not report["fp32"]["max_abs_diff"] <= FP32_TOLERANCE:
        raise ExportError(f"TorchScript disagrees with the eager encoder: max |diff| "
                          f"{report['fp32']['max_abs_diff']:.3g} > {FP32_TOLERANCE}; "
                          "nothing written")
    traced_int8 = None
    if int8:
        qwrapper = _Embeddings(quantize_int8(model), conf["pooling"], conf["normalize"])
        traced_int8 = trace(qwrapper.eval(), example)
        report["int8"] = q = embedding_parity(wrapper, traced_int8, inputs)
        say(f"int8 parity: cosine to fp32 min {q['min_cosine']:.4f}, mean "
            f"{q['mean_cosine']:.4f} over {q['rows']} padded rows")
        if not q["min_cosine"] >= INT8_MIN_COSINE:
            raise ExportError(f"the int8 encoder strays from fp32 (cosine {q['min_cosine']:.3f}"
                              f" < {INT8_MIN_COSINE}); nothing written")
    with torch.inference_mode():
        dim = int(traced(*example).shape[1])
    meta = {"kind": "encoder", "name": name, "source": resolved, "max_seq_len": max_seq_len,
            "dim": dim, "pooling": conf["pooling"], "normalize": conf["normalize"],
            "pooling_config": conf["config"], "parity": report}
    meta = write_artifact(out, {"fp32": traced, "int8": traced_int8}, VARIANT_FILES,
                          tokenizer, meta)
    say(f"wrote {out} (encoder, dim {dim}, version {meta['version']})")
    return out


def _single_segment(inputs):
    """An encoder reads one text: every token type 0."""
    ids, mask, types = inputs
    return ids, mask, torch.zeros_like(types)
