"""Issue 5: the question path when things change or break (fresh pipeline per test)."""

from __future__ import annotations

import threading
import time

from cluster import partitions
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
