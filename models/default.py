"""The bundled default reader: trained by the project, exported on first use.

``models/default_reader/`` holds the fine-tuned MiniLM reader as fp16 safetensors (see its
README, the model card). The TorchScript artifact is built from it locally, once, into
``.shardqa/artifacts/`` (export takes about a minute), never downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from cluster.errors import ShardqaError

BUNDLED = Path(__file__).resolve().parent / "default_reader"
NAME = "minilm-squad"


def default_artifact(variant_int8: bool = True, cache_dir: str | os.PathLike | None = None
                     ) -> Path:
    """Export the bundled reader (fp32 + int8) unless an export of it is already cached."""
    from models.export import EXPORT_SCHEME, export

    if not (BUNDLED / "config.json").is_file():
        raise ShardqaError(f"the bundled reader is missing ({BUNDLED}); pass --model ARTIFACT")
    cache = Path(cache_dir or os.environ.get("SHARDQA_ARTIFACTS", ".shardqa/artifacts"))
    stamp = str(int((BUNDLED / "model.safetensors").stat().st_mtime)) if (
        BUNDLED / "model.safetensors").exists() else "0"
    out = cache / f"{NAME}-{stamp}-x{EXPORT_SCHEME}"
    if (out / "shardqa-model.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    return export(BUNDLED, NAME, out, int8=variant_int8)
