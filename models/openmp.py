"""torch's OpenMP thread pool: how long an idle thread spins before it sleeps.

libgomp, the OpenMP runtime torch's CPU kernels run on here, reads ``GOMP_SPINCOUNT`` (and
``OMP_WAIT_POLICY``) once, when torch loads. Its default, 300,000 rounds, keeps each thread
of the pool spinning for milliseconds after every parallel region. A shard worker runs
short forward passes with gaps between them (waiting for requests, talking to Redis), so its
pool thread spun through those gaps on cores the other workers, the API and Redis needed,
and inside a pass it spun for a peer the scheduler had put aside: at concurrency 16 (k=5,
int8, two 2-thread workers on 2 cores) a question cost ~115 ms of worker CPU before and ~66
after, 16 -> 24-28 questions/s (README *Performance*, CPU budget). 10,000 rounds still
bridge the gaps between the operators of one forward pass on an idle machine; where cores
are oversubscribed, ``OMP_WAIT_POLICY=PASSIVE`` (no spinning) does better still.
"""

from __future__ import annotations

import os

#: spins of an idle libgomp thread before it sleeps (libgomp's default: 300,000)
SPIN_COUNT = 10_000


def configure() -> None:
    """Set the spin count for this process unless the environment already chose a policy;
    effective only before torch is first imported (``models/__init__`` calls it)."""
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
