"""Issue 5: the question path when things change or break (fresh pipeline per test)."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from cluster import keys, partitions
from gears import ranking
from gears.asker import Asker, NoReply
from loaders.documents import Document
from loaders.writer import ingest, wait_indexed
from tests.corpus import QUESTIONS


def test_new_passage_changes_generation_and_misses_cache(pipeline):
    client = pipeline
    asker = Asker(client, timeout_s=20)
    first = asker.ask(QUESTIONS[0])
    assert asker.ask(QUESTIONS[0]).cached
    gen = asker.generation(fresh=True)
    ingest(client, [Document("eiffel-2", "Gustave Eiffel's engineers designed the tower "
                             "for the 1889 World's Fair.", title="Eiffel")], progress=False)
    wait_indexed(client, timeout=60, progress=False)
    assert asker.generation(fresh=True) > gen
    after = asker.ask(QUESTIONS[0])
    assert not after.cached and after.generation > first.generation
    assert partitions.passage_id("eiffel-2", 0) in after.passages_read


def test_killed_worker_requests_are_claimed_or_503(pipeline, workers, cluster):
    client = pipeline
    victim = cluster.masters[0]
    workers.kill(victim)
    asker = Asker(client, timeout_s=4)
    results: list = []

    def ask(q):
        t0 = time.monotonic()
        try:
            results.append(("ok", asker.ask(q, use_cache=False), time.monotonic() - t0))
        except NoReply as exc:
            results.append(("503", exc, time.monotonic() - t0))

    threads = [threading.Thread(target=ask, args=(q,)) for q in QUESTIONS]
    for t in threads:
        t.start()
    time.sleep(1.0)
    workers.start(victim)  # restarted: reads its own pending entries again
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == len(QUESTIONS)
    assert all(elapsed < 4 + 3 for _, _, elapsed in results)  # never hangs past the timeout
    assert sum(1 for kind, _, _ in results if kind == "ok") >= 1
    workers.wait_ready()
    for q in QUESTIONS:  # and afterwards everything answers
        assert asker.ask(q, use_cache=False).answer is not None


def test_a_busy_worker_gets_no_second_copy_of_a_request(pipeline, workers):
    """Retry rule: a request queued for a live worker is waited for, never sent twice."""
    client = pipeline
    pmap = partitions.load(client)
    ranked = ranking.rank(client, pmap, QUESTIONS[0], 5)
    victim = partitions.owners(client, pmap)[ranked[0].partition]
    streams = [keys.request_stream(p.tag) for p in pmap]

    def requests_sent() -> int:
        # entries ever added, not XLEN: the worker XDELs a request once it has handled it,
        # and the resumed worker may already have dropped the expired copy it was handed
        # while stopped
        return sum(int(client.xinfo_stream(s)["entries-added"])
                   for s in streams if client.exists(s))

    before = requests_sent()
    workers.procs[victim].send_signal(signal.SIGSTOP)  # alive (fresh heartbeat), not reading
    try:
        with pytest.raises(NoReply):
            Asker(client, timeout_s=3, min_rank_ratio=0).ask(QUESTIONS[0], use_cache=False)
    finally:
        workers.procs[victim].send_signal(signal.SIGCONT)
    assert requests_sent() - before == len({c.partition for c in ranked})
