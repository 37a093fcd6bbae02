"""Polling until a condition holds or a deadline passes: the one loop every wait uses.

Starting a node, joining a cluster, moving slots, starting the API: each waits for something
another process does, by asking again every ``interval`` seconds. The check always runs at
least once, even with no time left, so a wait on something already true never fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from cluster.errors import ClusterError

T = TypeVar("T")


class Deadline:
    """One time limit shared by several waits in a row (``until(..., deadline.left())``)."""

    def __init__(self, timeout: float):
        self.at = time.monotonic() + timeout

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())


def until(check: Callable[[], T], timeout: float, interval: float = 0.05, *,
          what: str | Callable[[], str], retry_on: tuple[type[BaseException], ...] = (),
          error: type[Exception] = ClusterError) -> T:
    """``check()`` every ``interval`` s until it returns something true, which is returned.

    An exception in ``retry_on`` counts as "not yet". After ``timeout`` seconds raises
    ``error(what)`` (``what`` may be a function, to say what was still missing then).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except retry_on:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise error(what() if callable(what) else what)
        time.sleep(interval)
