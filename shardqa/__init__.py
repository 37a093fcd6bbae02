"""shardqa: Redis-native distributed extractive question answering.

``shardqa.connect(...)`` is the Python API (``shardqa.client``). It is imported on first
use, so ``import shardqa`` stays light (no Redis client, no torch).
"""

from __future__ import annotations

import os

# torch's C++ warnings (e.g. "quantize_per_tensor ... deprecated" on an int8 model's first
# run) are not shardqa's output; c10 reads this once, when torch is first imported
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

__all__ = ["Answer", "AnswerSpan", "Client", "Passage", "connect"]


def __getattr__(name: str):
    if name in __all__:
        from shardqa import client

        return getattr(client, name)
    raise AttributeError(f"module 'shardqa' has no attribute {name!r}")
