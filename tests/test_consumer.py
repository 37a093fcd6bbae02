"""The stream consumer: poison entries and vanished streams never stop a shard (issue 14.2/3).

Real cluster, real workers (``shardqa worker`` processes), real tiny reader.
"""

from __future__ import annotations

import time

from cluster import heartbeat, keys, partitions
from cluster.routing import per_master
from gears.asker import Asker
from gears.consumer import StreamConsumer
from gears.counters import Counters
from gears.follower import Shard
from gears.settings import WorkerSettings
from tests.corpus import CORPUS, QUESTIONS


def poison_request(tag_partition: int = 15) -> dict:
    """The entry from issue 14: a partition that is not the stream's, a pid that does not parse."""
    return {"ask": "x", "partition": str(tag_partition), "q": "who", "pids": "zz",
            "reply": "sq:reply:{x}", "deadline": "9999999999999", "enqueued": "0"}


def eventually(probe, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def dead_letters(client, tag: str) -> dict[tuple[str, str], dict]:
    """(original stream, original entry id) -> dead-letter record (ids repeat across streams)."""
    records = {}
    for _, fields in client.xrange(keys.dead_letters(tag)):
        record = {k.decode(): v.decode() for k, v in fields.items()}
        records[(record["stream"], record["id"])] = record
    return records


def not_pending(client, stream: str, entry_id: str) -> bool:
    group = client.xpending(stream, keys.WORKER_GROUP)
    return group["pending"] == 0 and not client.xrange(stream, min=entry_id, max=entry_id)


def worker_logs(pool) -> str:
    return "\n".join(p.read_text()[-3000:] for p in pool.tmp.glob("worker-*.log"))


def test_poison_entries_are_dead_lettered_and_the_worker_keeps_answering(pipeline, cluster,
                                                                         workers):
    client = pipeline
    pmap = partitions.load(client)
    eiffel = pmap.for_doc("eiffel")  # QUESTIONS[0] is read on this partition
    api = cluster.client_as("api")
    requests, ingest = keys.request_stream(eiffel.tag), keys.ingest_stream(eiffel.tag)
    other_pid = partitions.passage_id(
        next(d.doc_id for d in CORPUS if pmap.for_doc(d.doc_id) != eiffel), 0)
    poison = {
        "issue": api.xadd(requests, poison_request()),
        "bad pid": api.xadd(requests, {**poison_request(eiffel.index)}),
        "foreign pid": api.xadd(requests, {**poison_request(eiffel.index), "pids": other_pid}),
        "missing field": api.xadd(requests, {"ask": "y", "partition": str(eiffel.index)}),
        "oversized": api.xadd(requests, {**poison_request(eiffel.index), "q": "w" * 100_000}),
        "ingest pid": client.xadd(ingest, {"op": "put", "pid": "zz"}),
        "ingest op": client.xadd(ingest, {"op": "drop", "pid": partitions.passage_id("eiffel", 0)}),
    }
    asker = Asker(client, timeout_s=20)
    for question in QUESTIONS:
        answer = asker.ask(question, use_cache=False)
        assert answer.answer is not None
    ids = {name: (ingest if name.startswith("ingest") else requests, eid.decode())
           for name, eid in poison.items()}
    eventually(lambda: len(dead_letters(client, eiffel.tag)) >= len(ids))
    dead = dead_letters(client, eiffel.tag)
    missing = {name for name, eid in ids.items() if eid not in dead}
    assert not missing, worker_logs(workers)
    assert set(dead) == set(ids.values())
    reasons = {name: dead[eid]["reason"] for name, eid in ids.items()}
    assert "partition 15" in reasons["issue"]
    assert "'zz' does not parse" in reasons["bad pid"]
    assert "another partition" in reasons["foreign pid"]
    assert "missing field" in reasons["missing field"]
    assert "over" in reasons["oversized"] and "bytes" in reasons["oversized"]
    assert "'zz' does not parse" in reasons["ingest pid"]
    assert "unknown op 'drop'" in reasons["ingest op"]
    assert '"pids": "zz"' in dead[ids["issue"]]["fields"]
    assert len(dead[ids["oversized"]]["fields"]) < 10_000  # the record is capped
    assert not_pending(client, *ids["issue"])
    assert not_pending(client, *ids["ingest pid"])
    counted = eventually(lambda: sum(b.counters["dead"] for b in
                                     heartbeat.live_workers(client).values()) == len(ids))
    assert counted  # the heartbeats count them
    assert asker.ask(QUESTIONS[0], use_cache=False).answer is not None  # still serving


def test_deleted_request_stream_is_recreated_and_answered_again(pipeline, cluster):
    client = pipeline
    pmap = partitions.load(client)
    eiffel = pmap.for_doc("eiffel")
    asker = Asker(client, timeout_s=20)
    before = asker.ask(QUESTIONS[0], use_cache=False)
    assert client.delete(keys.request_stream(eiffel.tag)) == 1
    after = asker.ask(QUESTIONS[0], use_cache=False)  # its XADD makes a stream without group
    assert after.answer == before.answer and after.passage_id == before.passage_id
    groups = client.xinfo_groups(keys.request_stream(eiffel.tag))
    assert [g["name"] for g in groups] == [keys.WORKER_GROUP.encode()]


def consumer_of_partition_0(cluster, settings: WorkerSettings):
    """(client, partition 0, a consumer in-process on the shard that owns it, its counters)."""
    client = cluster.client()
    pmap = partitions.load(client)
    shard = Shard(cluster.target, client, partitions.owners(client, pmap)[0], pmap)
    shard.refresh()
    counters = Counters()
    consumer = StreamConsumer(shard, "test-consumer", settings, counters)
    consumer.join(set())
    return client, pmap[0], consumer, counters


def test_an_entry_delivered_max_times_without_ack_is_dead_lettered(cluster):
    client, part, consumer, counters = consumer_of_partition_0(
        cluster, WorkerSettings(max_deliveries=3))
    stream = keys.ingest_stream(part.tag)
    entry_id = client.xadd(stream, {"op": "put", "pid": partitions.passage_id("x", 0)}).decode()
    deliveries = 0
    for _ in range(10):  # a worker that takes the entry and fails on it every time
        entries = consumer.read({stream: part}, 10)
        deliveries += len(entries)
        assert all(e.id.decode() == entry_id for e in entries)
        consumer.retry(entries)
    assert deliveries == 3
    record = dead_letters(client, part.tag)[(stream, entry_id)]
    assert record["reason"] == "delivered 3 times without being acknowledged"
    assert record["stream"] == stream and record["consumer"] == "test-consumer"
    assert not_pending(client, stream, entry_id)
    assert counters.dead == 1


def test_dead_letter_stream_is_capped(cluster):
    client, part, consumer, _ = consumer_of_partition_0(cluster, WorkerSettings(dead_letter_cap=10))
    stream = keys.request_stream(part.tag)
    for i in range(300):
        client.xadd(stream, {"n": str(i)})
    for entry in consumer.read({stream: part}, 1000) or consumer.read({stream: part}, 1000):
        consumer.bury(entry, "test")
    length = per_master(client, [part], lambda pipe, p: pipe.xlen(keys.dead_letters(p.tag)))
    assert 10 <= length[part.index] < 300  # MAXLEN ~: trimmed to about the cap
    assert client.xpending(stream, keys.WORKER_GROUP)["pending"] == 0
