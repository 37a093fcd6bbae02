"""shardqa: Redis-native distributed extractive question answering.

``shardqa.connect(...)`` is the Python API (``shardqa.client``). It is imported on first
use, so ``import shardqa`` stays light (no Redis client, no torch).
"""

from __future__ import annotations

__all__ = ["Answer", "Client", "Passage", "connect"]


def __getattr__(name: str):
    if name in __all__:
        from shardqa import client

        return getattr(client, name)
    raise AttributeError(f"module 'shardqa' has no attribute {name!r}")
