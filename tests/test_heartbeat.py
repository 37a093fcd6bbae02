"""The heartbeat record and the one staleness rule every reader of it uses."""

from __future__ import annotations

import json

import pytest

from cluster import heartbeat, keys
from cluster.heartbeat import Heartbeat
from gears import health
from loaders.writer import running_workers


def beat(master: str = "127.0.0.1:7000", at: float = 1000.0, **kw) -> Heartbeat:
    return Heartbeat(master=master, time=at, partitions=[0, 3], pid=42, model="v1:fp32",
                     counters={"requests": 7, "batch_sizes": {"2": 1}}, **kw)


def test_encode_decode_round_trip_keeps_counters_flat():
    b = beat(no_reader=None)
    raw = b.encode()
    assert json.loads(raw)["requests"] == 7  # stored flat, as status readers expect
    assert Heartbeat.decode(raw) == b
    assert Heartbeat.decode(raw.encode()) == b


@pytest.mark.parametrize("raw", ["not json", "[]", '{"time": 1}', '{"master": "m", "time": "x"}',
                                 '{"master": "m", "time": 1, "partitions": ["a"]}'])
def test_malformed_records_decode_to_none(raw):
    assert Heartbeat.decode(raw) is None


def test_one_staleness_rule_default_and_setting(monkeypatch):
    monkeypatch.delenv(heartbeat.STALE_ENV, raising=False)
    assert heartbeat.stale_s() == heartbeat.DEFAULT_STALE_S == 5.0
    b = beat(at=1000.0)
    assert b.fresh(now=1005.0) and not b.fresh(now=1005.1)
    assert b.age(now=999.0) == 0.0  # a clock a little behind is not a negative age
    monkeypatch.setenv(heartbeat.STALE_ENV, "30")
    assert b.fresh(now=1029.0) and not b.fresh(now=1031.0)
    monkeypatch.setenv(heartbeat.STALE_ENV, "nonsense")
    assert heartbeat.stale_s() == 5.0


def test_live_workers_on_a_real_cluster_is_what_every_reader_sees(cluster, monkeypatch):
    monkeypatch.delenv(heartbeat.STALE_ENV, raising=False)
    client = cluster.client()
    import time

    now = time.time()
    heartbeat.write(client, "fresh", beat(at=now - 1, master="a:1"))
    heartbeat.write(client, "stale", beat(at=now - 6, master="b:1", ))
    client.hset(keys.workers(), "garbage", "{")
    assert set(heartbeat.all_workers(client)) == {"fresh", "stale"}
    assert set(heartbeat.live_workers(client, now)) == {"fresh"}
    assert set(running_workers(client, now)) == {"fresh"}
    assert health.served_partitions(client, now) == {0, 3}
    report = health.status(client)
    assert {w["id"]: w["live"] for w in report["workers"]} == {"fresh": True, "stale": False}
    monkeypatch.setenv(heartbeat.STALE_ENV, "10")  # one setting moves every reader
    assert set(heartbeat.live_workers(client, now)) == {"fresh", "stale"}
    assert set(running_workers(client, now)) == {"fresh", "stale"}
    heartbeat.remove(client, "fresh")
    assert set(heartbeat.all_workers(client)) == {"stale"}
