"""A stored model's identity as other records name it: ``name:version:variant``.

A partition's vector metadata names the encoder that made its vectors this way
(cluster.keys.vector_meta); the store loads a model by it (models.store.load_id). Kept apart
from the store so that readers of that metadata (``shardqa status``) need no torch.
"""

from __future__ import annotations


def model_id(meta: dict) -> str:
    """``name:version:variant`` of a model pointer or meta (a name has no ':', nor has a
    version)."""
    return f"{meta['name']}:{meta['version']}:{meta.get('variant', '')}"


def parse_model_id(value: str) -> tuple[str, str, str]:
    """(name, version, variant) of a ``model_id``."""
    name, _, rest = value.partition(":")
    version, _, variant = rest.partition(":")
    return name, version, variant
