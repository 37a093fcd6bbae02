"""models/openmp.py: torch loads with sleeping OpenMP threads, unless the environment chose.

Each case is a fresh interpreter: libgomp reads the setting once, when torch loads.
"""

from __future__ import annotations

import os
import subprocess
import sys

#: imports the worker and the reader, and prints what the environment said at the moment
#: torch was first imported (what libgomp reads)
PROBE = """
import os, sys
seen = []
class AtTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append((os.environ.get("GOMP_SPINCOUNT"), os.environ.get("OMP_WAIT_POLICY")))
sys.meta_path.insert(0, AtTorch())
import gears.worker, models.reader
print(*seen[0])
"""


def _probe(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    proc = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout.split()


def test_the_worker_loads_torch_after_setting_the_wait_policy():
    assert _probe() == ["None", "PASSIVE"]


def test_a_policy_or_spin_count_in_the_environment_is_left_alone():
    assert _probe(OMP_WAIT_POLICY="ACTIVE") == ["None", "ACTIVE"]
    assert _probe(GOMP_SPINCOUNT="300000") == ["300000", "None"]
