"""The Lua functions library (functions.lua) and loading it on every master."""

from __future__ import annotations

import re
from importlib import resources

LIBRARY = "shardqa"


def source() -> str:
    return resources.files("cluster").joinpath("functions.lua").read_text()


def version() -> str:
    match = re.search(r"local VERSION = '([^']+)'", source())
    if not match:
        raise RuntimeError("functions.lua has no VERSION")
    return match.group(1)


def load(client) -> None:
    """Load (REPLACE) the library on every primary; idempotent."""
    client.function_load(source(), replace=True)


def loaded_versions(client) -> dict[str, str | None]:
    """"host:port" -> version of the library loaded there (None where it is missing)."""
    result: dict[str, str | None] = {}
    for node in client.get_primaries():
        conn = client.get_redis_connection(node)
        try:
            value = conn.fcall_ro("shardqa_version", 0)
            result[node.name] = value.decode() if isinstance(value, bytes) else str(value)
        except Exception:  # noqa: BLE001 - a missing library reads as None
            result[node.name] = None
    return result
