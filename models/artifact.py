"""A reader from a folder on disk: an exported artifact (``shardqa model export``) or a Hugging
Face checkpoint. The one way ``shardqa eval`` and the bench load a reader; the shard workers
load theirs from Redis instead (models.store), verified by checksum.
"""

from __future__ import annotations

from pathlib import Path

import tokenizers
import torch

from cluster.errors import ShardqaError
from models.export import (
    MAX_QUESTION_TOKENS,
    METADATA,
    TOKENIZER,
    VARIANT_FILES,
    read_metadata,
    reading_settings,
)
from models.reader import Reader
from models.tokenization import load_tokenizer

CHECKPOINT_SEQ_LEN = 384  # what 'shardqa model export' uses when a checkpoint does not say


class ArtifactError(ShardqaError):
    """The folder holds no reader that can be loaded as asked."""

    exit_code = 2


class _QAModule:
    """An eager Hugging Face QA model called like the exported TorchScript module."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids)
        return out.start_logits, out.end_logits


def read_artifact(folder: str | Path, variant: str = "fp32"
                  ) -> tuple[torch.jit.ScriptModule, tokenizers.Tokenizer, dict]:
    """One variant's TorchScript module (eval mode), the artifact's tokenizer and metadata."""
    folder = Path(folder)
    meta = read_metadata(folder)
    info = meta.get("variants", {}).get(variant)
    if info is None:
        raise ArtifactError(f"{folder} has no {variant} variant (has "
                            f"{', '.join(meta.get('variants', {})) or 'none'})")
    module = torch.jit.load(str(folder / info.get("file", VARIANT_FILES[variant])),
                            map_location="cpu")
    module.eval()
    tokenizer = load_tokenizer((folder / TOKENIZER).read_text(encoding="utf-8"))
    return module, tokenizer, meta


def load_reader(path: str | Path, *, variant: str = "fp32", max_seq_len: int | None = None,
                threads: int | None = None, reader_class: type[Reader] = Reader
                ) -> tuple[Reader, str]:
    """(reader, description) from an exported artifact or a Hugging Face checkpoint folder.

    An artifact brings its own max_seq_len; a checkpoint folder is read in fp32 (also when
    stored in fp16) at ``max_seq_len`` (default CHECKPOINT_SEQ_LEN).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(f"--model {path}: no such folder")
    if (folder / METADATA).is_file():
        module, tokenizer, meta = read_artifact(folder, variant)
        seq = int(max_seq_len or meta.get("max_seq_len", CHECKPOINT_SEQ_LEN))
        reader = reader_class(module, tokenizer, max_seq_len=seq,
                              max_question_tokens=int(meta.get("max_question_tokens",
                                                               MAX_QUESTION_TOKENS)),
                              threads=threads, **reading_settings(meta))
        return reader, f"{meta.get('name')} {meta.get('version')} {variant} (seq {seq})"
    module, tokenizer = _read_checkpoint(folder, variant)
    seq = int(max_seq_len or CHECKPOINT_SEQ_LEN)
    reader = reader_class(module, tokenizer, max_seq_len=seq,
                          max_question_tokens=MAX_QUESTION_TOKENS, threads=threads)
    return reader, f"{folder.name} (checkpoint, eager fp32, seq {seq})"


def _read_checkpoint(folder: Path, variant: str) -> tuple[_QAModule, tokenizers.Tokenizer]:
    """An eager fp32 QA model and its fast tokenizer from a Hugging Face checkpoint folder."""
    if not (folder / "config.json").is_file():
        raise ArtifactError(f"--model {folder}: neither a shardqa artifact ({METADATA}) nor "
                            "a Hugging Face checkpoint (config.json)")
    if variant != "fp32":
        raise ArtifactError("--variant int8 needs an exported artifact (shardqa model export "
                            "--int8)")
    if not (folder / "tokenizer.json").is_file():
        raise ArtifactError(f"{folder} has no tokenizer.json (a fast tokenizer is needed)")
    from transformers import AutoModelForQuestionAnswering
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar is not ours
    try:
        model = AutoModelForQuestionAnswering.from_pretrained(str(folder), local_files_only=True,
                                                              dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"cannot load a QA model from {folder}: "
                            f"{str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    model.eval()
    tokenizer = load_tokenizer((folder / "tokenizer.json").read_text(encoding="utf-8"))
    return _QAModule(model), tokenizer
