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


def test_stuck_rule_default_setting_and_records_without_it(monkeypatch):
    monkeypatch.delenv(heartbeat.STUCK_ENV, raising=False)
    assert heartbeat.stuck_s() == heartbeat.DEFAULT_STUCK_S == 60.0
    b = beat(at=1000.0, turned=950.0)
    assert b.fresh(now=1000.0) and not b.stuck(now=1000.0)
    assert beat(at=1000.0, turned=939.0).stuck(now=1000.0)  # beats, but the loop hangs
    assert not beat(at=1000.0, turned=939.0).fresh(now=1000.0)
    assert beat(at=1000.0).fresh(now=1000.0)  # no turn reported yet: the beat alone counts
    monkeypatch.setenv(heartbeat.STUCK_ENV, "120")
    assert beat(at=1000.0, turned=939.0).fresh(now=1000.0)
    raw = json.dumps({"master": "m", "time": 1, "turned": "x"})
    assert Heartbeat.decode(raw) is None


def test_a_busy_loop_still_beats_and_a_hung_one_is_noticed(cluster, monkeypatch):
    """The pulse writes the heartbeat from its own thread: a worker whose loop is held by a
    long batch stays live; once its loop has not turned for SHARDQA_LOOP_STUCK_S it is not."""
    import time

    from gears.settings import WorkerSettings
    from gears.worker import ShardWorker

    monkeypatch.setenv(heartbeat.STALE_ENV, "2")
    monkeypatch.setenv(heartbeat.STUCK_ENV, "4")
    client = cluster.client()
    worker = ShardWorker(cluster.target, cluster.masters[0], WorkerSettings(heartbeat_s=0.2))
    worker.turn()  # one turn of the loop, then it is held (nothing calls turn for a while)
    worker.pulse.start()
    try:
        time.sleep(2.5)  # longer than the staleness rule, without a turn of the loop
        beat_now = heartbeat.all_workers(client)[worker.worker_id]
        assert beat_now.turned is not None and beat_now.age() < 2
        assert worker.worker_id in heartbeat.live_workers(client)
        while time.time() - beat_now.turned <= 4.5:  # past the stuck rule: a hung loop
            time.sleep(0.2)
        assert worker.worker_id in heartbeat.all_workers(client)
        assert worker.worker_id not in heartbeat.live_workers(client)
        worker.turn()  # the loop turns again: live at the next beat
        time.sleep(0.6)
        assert worker.worker_id in heartbeat.live_workers(client)
    finally:
        worker.pulse.stop()
        worker.keymiss.shutdown()
        heartbeat.remove(client, worker.worker_id)
    time.sleep(0.5)
    assert worker.worker_id not in heartbeat.all_workers(client)  # nothing beats after stop
