"""cluster.waiting: the one poll-until-deadline loop."""

from __future__ import annotations

import pytest

from cluster.errors import ClusterError
from cluster.waiting import Deadline, until


def test_until_returns_the_first_true_result_and_treats_listed_errors_as_not_yet():
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("not up yet")
        return None if len(calls) < 4 else {"ready": True}

    assert until(check, 30, 0, what="never", retry_on=(ConnectionError,)) == {"ready": True}
    assert len(calls) == 4


def test_until_raises_the_given_error_with_what_was_missing_then():
    class Late(ClusterError):
        pass

    missing = ["node 7001"]
    with pytest.raises(Late, match="still waiting for node 7001"):
        until(lambda: False, 0.05, 0.01, error=Late,
              what=lambda: f"still waiting for {missing[0]}")


def test_an_error_not_listed_is_not_swallowed():
    def check():
        raise ValueError("a bug, not a wait")

    with pytest.raises(ValueError, match="a bug"):
        until(check, 30, 0, what="never", retry_on=(ConnectionError,))


def test_the_check_runs_once_even_with_no_time_left():
    deadline = Deadline(0)
    assert deadline.left() == 0.0
    assert until(lambda: "already true", deadline.left(), what="never") == "already true"
    with pytest.raises(ClusterError, match="too late"):
        until(lambda: False, deadline.left(), what="too late")
