"""torch's OpenMP thread pool: how long an idle thread spins before it sleeps.

libgomp, the OpenMP runtime torch's CPU kernels run on here, reads ``GOMP_SPINCOUNT`` (and
``OMP_WAIT_POLICY``) once, when torch loads. Its default of 300,000 spins keeps each thread
of the pool busy-waiting for milliseconds after every parallel region. A shard worker runs
short forward passes with gaps between them (waiting for requests, talking to Redis), so
its second thread spent those gaps spinning, on cores the other workers, the API and Redis
needed: at concurrency 16 (k=5, int8, 2 masters with 2-thread workers on 2 cores) a
question cost 114 ms of worker CPU, of which a worker that read almost nothing burned
~30 ms; with 10,000 spins it cost ~60 ms and throughput went from 16 to 26 q/s (see README
*Performance*, bench/results/cpu-budget-*.json). 10,000 spins still bridge the gaps
between the operators of one forward pass: a 1 x 192 int8 forward takes as long as with
the default, where ``OMP_WAIT_POLICY=PASSIVE`` (no spinning at all) made it ~30% slower.
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
