"""The key-miss responder answers redis-cli answer keys, once per key at a time."""

from __future__ import annotations

import json
import time

from cluster import keys
from gears.counters import Counters
from gears.keymiss import KeyMissResponder, TokenBucket
from gears.settings import WorkerSettings
from tests.corpus import QUESTIONS


def test_answers_ask_keys_and_ignores_other_keys(shared_pipeline):
    client = shared_pipeline
    counters = Counters()
    responder = KeyMissResponder(client, WorkerSettings(answer_ttl_s=30), counters)
    try:
        other = "sq:ans:0:5:notaquestion"
        responder.on_event(other.encode())
        key = keys.ask_key(QUESTIONS[2])
        responder.on_event(key.encode())
        responder.on_event(key)  # the same key while it is being answered: not twice
        deadline = time.monotonic() + 30
        # wait on the counter, not the key: any lookup of a missing key (GET, EXISTS, TTL)
        # publishes keymiss and would wake the real workers' responders too
        while counters.keymiss + counters.errors == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = json.loads(client.get(key))
        assert answer["question"] == QUESTIONS[2] and answer["answer"]
        assert 0 < client.ttl(key) <= 30
        assert not client.exists(other)  # not a redis-cli answer key: left alone
        time.sleep(0.5)
        assert counters.keymiss == 1 and counters.errors == 0
    finally:
        responder.shutdown()


def test_the_key_miss_budget_refills_at_its_rate_and_saves_up_a_burst():
    now = [100.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(5)] == [True, True, True, False, False]
    now[0] += 1.0  # two tokens a second
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] += 60.0  # a quiet minute saves up the burst, no more
    assert sum(bucket.take() for _ in range(10)) == 3
    off = TokenBucket(rate=0, burst=5, clock=lambda: now[0])
    assert not any(off.take() for _ in range(5))  # rate 0: key misses are never answered

