"""Which reader variant a host runs: ``auto`` is bf16 where the CPU has fast bf16 (AVX512-BF16
or AMX), else fp32. Without those instructions torch emulates bf16 matmul, slower than fp32,
so a bf16 reader is refused there rather than served slowly. Hosts differ between runs: the
choice is made where the workers run, from the CPU's flags, never stored with the artifact.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cluster.errors import ShardqaError

#: what an exported reader artifact can hold (``shardqa model export``, ``eval --variant``)
ARTIFACT_VARIANTS = ("fp32", "int8", "bf16")
#: what ``up``/``demo`` accept: an artifact variant, or ``auto``
READER_VARIANTS = ("auto", *ARTIFACT_VARIANTS)
#: the default of ``up``, ``demo`` and the bench's deployment (``--reader-variant``)
READER_VARIANT = "auto"
#: any of these makes bf16 matmul native: AVX512-BF16 (dot products) or AMX tiles
FAST_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


class VariantError(ShardqaError):
    """A variant this host cannot run well: a one-line refusal, exit code 2."""

    exit_code = 2


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def fast_bf16(flags: Iterable[str] | None = None) -> bool:
    """True if the CPU (``flags``, default this host's) runs bf16 matmul natively."""
    return bool(FAST_BF16_FLAGS & set(cpu_flags() if flags is None else flags))


def choose_reader_variant(requested: str | None, flags: Iterable[str] | None = None) -> str:
    """The artifact variant to run for ``requested`` (None or "auto": bf16 on a fast-bf16
    CPU, else fp32); bf16 asked for on a CPU without fast bf16 is refused."""
    fast = fast_bf16(flags)
    if requested in (None, "auto"):
        return "bf16" if fast else "fp32"
    if requested not in ARTIFACT_VARIANTS:
        raise VariantError(f"reader variant {requested!r}: choose one of "
                           f"{', '.join(READER_VARIANTS)}")
    if requested == "bf16" and not fast:
        raise VariantError("this CPU has no fast bf16 (no avx512_bf16 or amx_bf16 flag): a bf16 "
                           "reader would be slower than fp32; use --reader-variant fp32 or int8")
    return requested
