"""torch's OpenMP thread pool: idle threads sleep instead of spinning.

libgomp, the OpenMP runtime torch's CPU kernels run on here, reads ``OMP_WAIT_POLICY`` and
``GOMP_SPINCOUNT`` once, when torch loads. By default an idle thread of the pool spins for
300,000 rounds (milliseconds) after every parallel region before it sleeps. A shard worker
runs short forward passes with gaps between them (waiting for requests, talking to Redis),
on cores it shares with the other workers, the API and Redis: its pool thread spun through
those gaps on cores the others needed, and inside a pass it spun for a peer the scheduler had
put aside. Measured (README *Performance*, CPU budget): at concurrency 16 (k=5, int8, two
2-thread workers on 2 cores) a question cost ~115 ms of worker CPU with the default, 66 with
10,000 rounds and 57 with none, and with other work on the machine the gap only grows;
spinning helps only a lone forward pass on an otherwise idle machine. So the pool sleeps
(``OMP_WAIT_POLICY=PASSIVE``); a machine that runs nothing but one worker can ask for
spinning back with ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY=ACTIVE``.
"""

from __future__ import annotations

import os

#: what shardqa's processes tell libgomp unless their environment says otherwise
WAIT_POLICY = "PASSIVE"


def configure() -> None:
    """Set the wait policy for this process unless the environment already chose one;
    effective only before torch is first imported (``models/__init__`` calls it)."""
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
