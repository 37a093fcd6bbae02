"""Export a Hugging Face extractive-QA checkpoint to a TorchScript reader artifact.

The artifact is what the model store pushes to every master: TorchScript (no pickle, no
transformers needed to run it), the fast tokenizer's JSON, and a metadata file. Nothing is
written unless the traced module agrees with the eager model on padded inputs of several
batch sizes and lengths: tracing can silently bake in a shape or a branch.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from cluster.errors import ShardqaError
from models.decoding import best_span
from models.layout import pair_layout, special_ids
from models.tokenization import load_tokenizer, plain

METADATA = "shardqa-model.json"
TOKENIZER = "tokenizer.json"
VARIANT_FILES = {"fp32": "reader.pt", "int8": "reader-int8.pt", "bf16": "reader-bf16.pt"}
MAX_QUESTION_TOKENS = 64
#: bumped whenever export writes different modules for the same checkpoint (cached exports of
#: an older scheme are then rebuilt): 2 = Int8Linear (8-bit activations, 7-bit weights),
#: 3 = the checkpoint's INT8_CHOICE layers kept fp32
EXPORT_SCHEME = 3
#: in a checkpoint folder: the Linear layers its int8 variant keeps in fp32 by default, as
#: chosen on dev by ``shardqa model int8-select`` (``models/int8_selection.py``)
INT8_CHOICE = "shardqa-int8.json"
FP32_TOLERANCE = 1e-4
#: the bf16 gate, in logits of the fp32 model: the span bf16 picks may score at most this much
#: below fp32's own best span (by fp32's logits). bf16 keeps 8 bits of mantissa, so near-ties
#: (random parity tokens, tiny models) may flip, but never to a span fp32 rates much worse.
BF16_SPAN_TOLERANCE = 0.5
#: (batch, length) of the parity inputs; the last length is replaced by max_seq_len.
PARITY_SHAPES = ((1, 9), (2, 33), (4, 128), (8, None))

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ExportError(ShardqaError):
    """The checkpoint cannot be exported (missing, not a QA checkpoint, an input layout the
    reader cannot build, or parity failed): a refusal, exit code 2."""

    exit_code = 2


class QAOutputs(torch.nn.Module):
    """Calls the HF model with keywords and returns exactly (start_logits, end_logits)."""

    def __init__(self, model: torch.nn.Module, with_token_types: bool):
        super().__init__()
        self.model = model
        self.with_token_types = with_token_types

    def forward(self, input_ids, attention_mask, token_type_ids):
        if self.with_token_types:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids)
        else:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out[0], out[1]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ExportError(
            f"model name {name!r} must be 1-64 characters of letters, digits, '.', '_' or '-'"
        )
    return name


# --- loading the checkpoint ---------------------------------------------------------------

def resolve_source(source: str | Path) -> tuple[str, bool]:
    """(what to pass to from_pretrained, is_local). Clear errors for anything unusable."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ExportError(f"{path} has no config.json: not a Hugging Face checkpoint folder")
        weights = [p for p in path.iterdir()
                   if p.name.endswith((".safetensors", ".bin")) or p.name.endswith(".index.json")]
        if not weights:
            raise ExportError(f"{path} has no model weights (model.safetensors / *.bin)")
        if not ((path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file()):
            raise ExportError(f"{path} has no tokenizer (tokenizer.json or vocab.txt)")
        return str(path.resolve()), True
    if path.exists():
        raise ExportError(f"{path} is a file; SOURCE must be a checkpoint folder or a hub id")
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" \
        and os.sep in text
    if looks_like_path or not _HUB_ID.match(text):
        raise ExportError(f"no such checkpoint folder: {text}")
    offline = any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if offline:
        raise ExportError(
            f"{text!r} is not a local folder and the hub is off (HF_HUB_OFFLINE): "
            "pass a local checkpoint folder"
        )
    return text, False


def _load(source: str, local: bool):
    from transformers import AutoModelForQuestionAnswering

    torch.manual_seed(0)  # a fresh (random) QA head is the same on every export
    try:
        model, info = AutoModelForQuestionAnswering.from_pretrained(
            source, local_files_only=local, output_loading_info=True,
            dtype=torch.float32,  # a checkpoint stored in fp16 is traced and quantized in fp32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise _load_error("an extractive-QA model", source, local, exc) from exc
    tokenizer = fast_tokenizer(source, local)
    model.eval()
    missing = [k for k in info.get("missing_keys", []) if "qa_outputs" in k]
    return model, tokenizer, bool(missing)


def _load_error(what: str, source: str, local: bool, exc: Exception) -> ExportError:
    where = "folder" if local else "hub id (is the machine online?)"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ExportError(f"cannot load {what} from {where} {source}: {first}")


def fast_tokenizer(source: str, local: bool):
    """The checkpoint's fast tokenizer (truncation/padding off), checked for [CLS]/[SEP]/[PAD]."""
    from transformers import AutoTokenizer

    try:
        hf_tok = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise _load_error("a tokenizer", source, local, exc) from exc
    backend = getattr(hf_tok, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"{source} has no fast tokenizer (tokenizer.json); shardqa needs one")
    tokenizer = load_tokenizer(plain(backend).to_str())
    try:
        pair_layout(tokenizer)
    except ShardqaError as exc:
        raise ExportError(f"{source}: {exc}") from exc
    return tokenizer


def checkpoint_kind(source: str | Path) -> str:
    """"reader" for an extractive-QA checkpoint, "encoder" for a sentence encoder (a
    sentence-transformers folder, or a bare base model such as ``BertModel``)."""
    path = Path(str(source)).expanduser()
    if not (path / "config.json").is_file():
        return "reader"  # a hub id: the reader, as before
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ExportError(f"{path / 'config.json'} is not valid JSON: {exc}") from exc
    arch = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith("ForQuestionAnswering") for a in arch):
        return "reader"
    if (path / "modules.json").is_file() or any(a.endswith("Model") for a in arch):
        return "encoder"
    return "reader"


# --- parity ---------------------------------------------------------------------------

def sample_inputs(vocab_size: int, specials: tuple[int, int, int], batch: int, length: int,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded [CLS] q [SEP] c [SEP] rows of random tokens; row 0 is full length, others shorter."""
    cls_id, sep_id, pad_id = specials
    rng = np.random.default_rng(seed)
    ids = np.full((batch, length), pad_id, dtype=np.int64)
    mask = np.zeros((batch, length), dtype=np.int64)
    types = np.zeros((batch, length), dtype=np.int64)
    low = min(999, vocab_size - 1) if vocab_size > 1000 else 5
    for row in range(batch):
        n = length if row == 0 else int(rng.integers(max(5, length // 3), length + 1))
        nq = max(1, min(n - 4, int(rng.integers(1, 17))))
        body = rng.integers(low, vocab_size, size=n)
        body[0], body[nq + 1], body[n - 1] = cls_id, sep_id, sep_id
        ids[row, :n] = body
        mask[row, :n] = 1
        types[row, nq + 2:n] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types)


def _spans(start: torch.Tensor, end: torch.Tensor, mask: torch.Tensor, types: torch.Tensor):
    out = []
    for row in range(start.shape[0]):
        ctx = np.nonzero((types[row] == 1).numpy() & (mask[row] == 1).numpy())[0]
        out.append(best_span(start[row].numpy(), end[row].numpy(), int(ctx[0]),
                             int(ctx[-1]), 30)[:2])  # last context position is the final [SEP]
    return out


def _regret(start: torch.Tensor, end: torch.Tensor, best: list, chosen: list) -> float:
    """How much lower the reference logits score the ``chosen`` spans than their ``best``."""
    worst = 0.0
    for row, ((i, j), (k, m)) in enumerate(zip(best, chosen, strict=True)):
        worst = max(worst, float(start[row, i] + end[row, j] - start[row, k] - end[row, m]))
    return worst


def parity(reference: Callable, candidate: Callable, inputs: list) -> dict:
    """Max |logit difference| (over real tokens) and how often the best span agrees."""
    worst = regret = 0.0
    same = total = 0
    with torch.inference_mode():
        for ids, mask, types in inputs:
            ref = reference(ids, mask, types)
            got = candidate(ids, mask, types)
            real = mask.bool()
            for a, b in ((ref[0], got[0]), (ref[1], got[1])):
                worst = max(worst, float((a.float() - b.float()).abs()[real].max()))
            pa = _spans(ref[0], ref[1], mask, types)
            pb = _spans(got[0].float(), got[1].float(), mask, types)
            same += sum(x == y for x, y in zip(pa, pb, strict=True))
            total += len(pa)
            regret = max(regret, _regret(ref[0], ref[1], pa, pb))
    return {"max_abs_diff": worst, "span_agreement": same / total if total else 1.0,
            "max_span_regret": regret, "pairs": total}


class Int8Linear(torch.ao.nn.quantized.dynamic.Linear):
    """Dynamic int8 Linear with full 8-bit activations and 7-bit weights.

    fbgemm's default quantizes activations to 7 bits (reduce_range) so that u8 x s8 pair sums
    cannot saturate AVX2's 16-bit accumulators. Taking that bit from the per-channel weights
    instead keeps the same guarantee and loses less: dev F1 69.02 vs 68.19 (fp32 70.13).
    """

    _FLOAT_MODULE = torch.nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(
            x, self._packed_params._packed_params, reduce_range=False).to(x.dtype)

    def _get_name(self) -> str:
        return "Int8Linear"


#: per-channel symmetric weights in [-64, 63], activations quantized per call over [0, 255]
INT8_QCONFIG = torch.ao.quantization.QConfig(
    activation=torch.ao.quantization.observer.default_dynamic_quant_observer,
    weight=torch.ao.quantization.observer.PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-64, quant_max=63))


def int8_candidates(model: torch.nn.Module) -> list[str]:
    """The Linear layers int8 quantizes, in model order: all but the QA output layer
    (hidden x 2, negligible cost), which stays fp32 since its outputs are the logits."""
    return [name for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and not name.endswith("qa_outputs")]


def quantize_int8(model: torch.nn.Module, keep_fp32: Iterable[str] = ()) -> torch.nn.Module:
    """Every int8 candidate Linear to Int8Linear but those named in ``keep_fp32`` (the
    layers whose quantization costs the most accuracy; see ``models/int8_selection.py``)."""
    from torch.ao.quantization import quantize_dynamic

    candidates = int8_candidates(model)
    keep = set(keep_fp32)
    unknown = sorted(keep - set(candidates))
    if unknown:
        example = candidates[0] if candidates else "none"
        raise ExportError(f"--int8-keep-fp32: this model has no quantized Linear layer named "
                          f"{', '.join(unknown)} (one it has: {example})")
    spec = {name: INT8_QCONFIG for name in candidates if name not in keep}
    with warnings.catch_warnings():  # torch's deprecation notice is not shardqa's output
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8,
                                mapping={torch.nn.Linear: Int8Linear})


class Float32Logits(torch.nn.Module):
    """A bf16 reader (weights and activations in bf16) whose logits come out as float32, so
    the worker decodes a bf16 variant exactly as the others."""

    def __init__(self, outputs: QAOutputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, input_ids, attention_mask, token_type_ids):
        start, end = self.outputs(input_ids, attention_mask, token_type_ids)
        return start.float(), end.float()


def to_bf16(model: torch.nn.Module, with_token_types: bool) -> torch.nn.Module:
    """A copy of ``model`` in bf16 throughout (measured faster than fp32 under autocast, and
    closer: autocast keeps some ops fp32 and pays a cast at each boundary)."""
    return Float32Logits(QAOutputs(copy.deepcopy(model).to(torch.bfloat16),
                                   with_token_types)).eval()


def trace(wrapper: torch.nn.Module, example) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            return torch.jit.trace(wrapper, example, check_trace=False, strict=False)


# --- export ---------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Exactly the libraries' notes an export triggers, which are not shardqa's output:
    transformers' "Loading weights" bar and its ``loss_type=None ... ForCausalLMLoss`` note
    (logged when tracing touches ``loss_function``; a QA model computes no loss here), and
    torch's deprecation warnings for quantization and TorchScript."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning,
                                    message=r"torch\.quantize_per_tensor, torch\.quantize_per")
            # shown only under -W default; TorchScript and torch.ao are what the readers run
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    message=r"torch\.ao\.quantization is deprecated")
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    message=r"`torch\.jit\.save` is deprecated")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def export(source: str | Path, name: str, out: Path, *, int8: bool = False,
           bf16: bool = False, max_seq_len: int = 384, null_threshold: float | None = None,
           temperature: float | None = None, min_confidence: float | None = None,
           int8_keep_fp32: Iterable[str] | None = None,
           log: Callable[[str], None] | None = None) -> Path:
    """Trace SOURCE to TorchScript, check parity, write the artifact folder ``out``.

    ``int8_keep_fp32``: Linear layers the int8 variant leaves in fp32; None: those the
    checkpoint folder's INT8_CHOICE names (none without one). ``bf16``: also a bf16 variant
    (fast only on CPUs with AVX512-BF16 or AMX: models/default.py decides when to use it).

    ``null_threshold`` (SQuAD 2.0-style checkpoints): a passage says "no answer" when its
    null score beats its best span by more than this; None: the reader always answers.
    ``temperature``: of the confidence softmax (default 1); ``min_confidence``: a passage
    whose best span is less likely (within the passage) says "no answer" (SQuAD 1.1 readers;
    default off). Abstaining on the confidence answers show is the asker's
    (gears.asker.MIN_CONFIDENCE), not this."""
    reading = {"null_threshold": null_threshold, "temperature": temperature,
               "min_confidence": min_confidence}
    with _quiet_libraries():
        return _export(source, name, out, variants={"int8": int8, "bf16": bf16},
                       max_seq_len=max_seq_len,
                       reading={k: v for k, v in reading.items() if v is not None},
                       keep_fp32=int8_keep_fp32, log=log)


def int8_choice(source: str | Path) -> list[str]:
    """The layers a checkpoint folder's INT8_CHOICE keeps in fp32 ([] without the file)."""
    path = Path(source) / INT8_CHOICE
    if not path.is_file():
        return []
    try:
        layers = json.loads(path.read_text(encoding="utf-8"))["keep_fp32"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path}: not a shardqa int8 choice ({exc})") from None
    if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
        raise ExportError(f"{path}: keep_fp32 must be a list of layer names")
    return layers


def _export(source: str | Path, name: str, out: Path, *, variants: dict[str, bool],
            max_seq_len: int, reading: dict[str, float], keep_fp32: Iterable[str] | None,
            log: Callable[[str], None] | None) -> Path:
    say = log or (lambda _msg: None)
    check_name(name)
    out = check_out(out)
    resolved, local = resolve_source(source)
    say(f"loading {resolved}")
    model, tokenizer, random_head = _load(resolved, local)
    _check_seq_len(model.config, max_seq_len)
    with_types = takes_token_types(model)
    keep = list(keep_fp32) if keep_fp32 is not None else (
        int8_choice(resolved) if local else [])
    int8 = variants.get("int8", False)
    modules, report = _trace_checked(model, tokenizer, with_types, max_seq_len,
                                     keep if int8 else None, variants.get("bf16", False), say)
    meta = {
        "kind": "reader",
        "name": name,
        "source": resolved,
        "max_seq_len": max_seq_len,
        "max_question_tokens": MAX_QUESTION_TOKENS,
        "random_qa_head": random_head,
        **reading,
        "parity": report,
    }
    if int8:
        meta["int8_fp32_layers"] = keep
    meta = write_artifact(out, modules, VARIANT_FILES, tokenizer, meta)
    say(f"wrote {out} (version {meta['version']})")
    return out


def takes_token_types(model: torch.nn.Module) -> bool:
    """RoBERTa, XLM-R (one token type) and DeBERTa-v3 (none) are read with type 0 throughout,
    as they were trained: their wrapper does not pass the reader's token types on."""
    return ("token_type_ids" in inspect.signature(model.forward).parameters
            and int(getattr(model.config, "type_vocab_size", 2) or 0) >= 2)


def _check_seq_len(config, max_seq_len: int) -> None:
    """The window must fit the model's positions and leave room for a passage."""
    limit = int(getattr(config, "max_position_embeddings", max_seq_len))
    if not 8 <= max_seq_len <= limit:
        raise ExportError(f"--max-seq-len must be in [8, {limit}] for this model, got "
                          f"{max_seq_len}")
    if max_seq_len - MAX_QUESTION_TOKENS - 3 < 16:
        raise ExportError(f"--max-seq-len {max_seq_len} leaves too little room for passages")


def _trace_checked(model, tokenizer, with_types: bool, max_seq_len: int,
                   int8: list[str] | None, bf16: bool, say: Callable[[str], None]):
    """({variant: TorchScript module}, parity report); refuses an fp32 trace that disagrees
    with the eager model, or a bf16 one that picks spans fp32 rates much worse, so nothing
    is written then. ``int8``: None for no int8 variant, else the Linear layers it keeps in
    fp32."""
    specials = special_ids(tokenizer)
    vocab = int(model.config.vocab_size)
    shapes = [(b, n or max_seq_len) for b, n in PARITY_SHAPES]
    inputs = [sample_inputs(vocab, specials, b, min(n, max_seq_len), seed=i)
              for i, (b, n) in enumerate(shapes)]

    wrapper = QAOutputs(model, with_types).eval()
    say("tracing fp32")
    traced = trace(wrapper, sample_inputs(vocab, specials, 2, 16, seed=99))
    fp32 = parity(wrapper, traced, inputs)
    say(f"fp32 parity: max |diff| {fp32['max_abs_diff']:.3g} over {fp32['pairs']} padded pairs "
        f"(shapes {shapes})")
    if not fp32["max_abs_diff"] <= FP32_TOLERANCE:
        raise ExportError(f"TorchScript disagrees with the eager model: max |logit diff| "
                          f"{fp32['max_abs_diff']:.3g} > {FP32_TOLERANCE}; nothing written")
    report = {"fp32": fp32, "shapes": shapes, "tolerance": FP32_TOLERANCE}
    modules = {"fp32": traced}
    if bf16:
        modules["bf16"], report["bf16"] = _bf16_checked(model, wrapper, with_types, inputs,
                                                        (vocab, specials), say)
    if int8 is not None:
        kept = f"; {len(int8)} layers kept fp32" if int8 else ""
        say(f"quantizing int8 (dynamic; 8-bit activations, 7-bit per-channel weights{kept})")
        qmodel = quantize_int8(model, int8)
        traced_int8 = trace(QAOutputs(qmodel, with_types).eval(),
                             sample_inputs(vocab, specials, 2, 16, seed=99))
        q = parity(wrapper, traced_int8, inputs)
        report["int8"] = q
        modules["int8"] = traced_int8
        say(f"int8: best span equals fp32's on {q['span_agreement']:.1%} of {q['pairs']} pairs; "
            f"max |logit diff| {q['max_abs_diff']:.3g}")
    return modules, report


def _bf16_checked(model, wrapper: QAOutputs, with_types: bool, inputs: list,
                  vocab_specials: tuple, say: Callable[[str], None]):
    """(bf16 TorchScript, its parity) or a refusal past BF16_SPAN_TOLERANCE."""
    vocab, specials = vocab_specials
    say("tracing bf16 (weights and activations bf16, logits float32)")
    traced = trace(to_bf16(model, with_types), sample_inputs(vocab, specials, 2, 16, seed=99))
    b = {**parity(wrapper, traced, inputs), "tolerance_span_regret": BF16_SPAN_TOLERANCE}
    say(f"bf16: best span equals fp32's on {b['span_agreement']:.1%} of {b['pairs']} pairs; "
        f"fp32 rates bf16's spans at most {b['max_span_regret']:.3g} below its own; "
        f"max |logit diff| {b['max_abs_diff']:.3g}")
    if not b["max_span_regret"] <= BF16_SPAN_TOLERANCE:
        raise ExportError(f"bf16 picks spans fp32 rates {b['max_span_regret']:.3g} logits "
                          f"below its best (> {BF16_SPAN_TOLERANCE}); nothing written")
    return traced, b


def check_out(out: Path) -> Path:
    """``--out`` may be new, empty, or an earlier artifact (replaced); nothing else."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / METADATA).is_file():
        raise ExportError(f"--out {out} is a non-empty folder that is not a shardqa artifact")
    return out


def write_artifact(out: Path, modules: dict, files: dict[str, str], tokenizer,
                   meta: dict) -> dict:
    """Write the traced ``modules`` (variant -> module or None), the tokenizer and the
    metadata into ``out`` at once (a temporary folder renamed into place), so a failed
    export never leaves half an artifact. The version is the fp32 module's sha256 prefix."""
    dtypes = {"fp32": "float32", "int8": "qint8", "bf16": "bfloat16"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        variants = {}
        for variant, module in modules.items():
            if module is None:
                continue
            path = tmp / files[variant]
            torch.jit.save(module, str(path))
            variants[variant] = {"file": path.name, "sha256": sha256_file(path),
                                 "size": path.stat().st_size, "dtype": dtypes[variant]}
        (tmp / TOKENIZER).write_text(tokenizer.to_str(), encoding="utf-8")
        meta = {**meta, "version": variants["fp32"]["sha256"][:12],
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "variants": variants}
        (tmp / METADATA).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


#: how the reader reads its logits, set at export (or fitted on dev); absent: not used
READING_FIELDS = ("null_threshold", "temperature", "min_confidence")


def reading_settings(meta: dict) -> dict[str, float]:
    """The reading settings an artifact's (or a stored copy's) meta sets, as floats."""
    return {k: float(meta[k]) for k in READING_FIELDS if meta.get(k) not in (None, "")}


def save_reading(artifact: Path, settings: dict[str, float]) -> dict:
    """Write reading settings (fitted on dev) into an artifact's metadata; push it again
    for the workers to use them (another version of the same file)."""
    unknown = set(settings) - set(READING_FIELDS)
    if unknown:
        raise ExportError(f"not reading settings: {', '.join(sorted(unknown))}")
    meta = read_metadata(artifact)
    meta.update({k: float(v) for k, v in settings.items()})
    path = Path(artifact) / METADATA
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return meta


def read_metadata(artifact: Path) -> dict:
    """The artifact's metadata, with a clear error if the folder is not an artifact."""
    path = Path(artifact) / METADATA
    if not path.is_file():
        raise ExportError(f"{artifact} is not a shardqa model artifact (no {METADATA}); "
                          "make one with 'shardqa model export'")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not valid JSON: {exc}") from exc
