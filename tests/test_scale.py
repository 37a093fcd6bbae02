"""Issue 9: grow the cluster by a master while questions are being answered.

The end-to-end test starts its own 3-master cluster with real workers and the tiny reader,
grows it to 4 masters with ``shardqa.scale.add_master`` while a thread asks continuously,
and checks nothing failed, every partition is served beside its new master, and the answers
did not change.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from cluster import heartbeat, keys, partitions, rebalance, routing
from cluster.partitions import Partition, PartitionMap, doc_key
from cluster.waiting import until
from gears.asker import Asker, NoReply
from loaders.documents import Document
from models import store
from tests.conftest import WorkerPool, run_cli, start_cluster, start_pipeline, wait_reembedded
from tests.corpus import QUESTIONS

#: what a client may see while a slot is half-moved; asking again is a retried request
REDIRECTS = (redis.exceptions.AskError, redis.exceptions.TryAgainError)

# --- the plan, without a cluster ------------------------------------------------------------


def _pmap(count: int) -> PartitionMap:
    return PartitionMap([Partition(i, f"p{i}.0", i) for i in range(count)])


@given(st.integers(1, 40), st.integers(1, 8), st.data())
def test_plan_balances_with_fewest_moves_and_keeps_lowest(count, n_masters, data):
    names = [f"m{i}" for i in range(n_masters)]
    owner = {i: data.draw(st.sampled_from(names)) for i in range(count)}
    moves = rebalance.plan(_pmap(count), owner, names)
    after = dict(owner)
    for move in moves:
        assert after[move.partition.index] == move.source != move.dest
        after[move.partition.index] = move.dest
    sizes = Counter(after.values())
    per_master = [sizes.get(m, 0) for m in names]
    assert max(per_master) - min(per_master) <= 1
    held = sorted((Counter(owner.values()).get(m, 0) for m in names), reverse=True)
    per, extra = divmod(count, n_masters)
    fewest = sum(max(0, c - per - (i < extra)) for i, c in enumerate(held))
    assert len(moves) == fewest
    for m in names:  # a master that keeps partitions keeps its lowest (its model copy's tag)
        own = sorted(i for i, o in owner.items() if o == m)
        if own and sizes.get(m, 0):
            assert after[own[0]] == m
    assert [m.partition.index for m in moves] == sorted(m.partition.index for m in moves)


def test_plan_refuses_partitions_on_unknown_master():
    with pytest.raises(rebalance.RebalanceError, match="not a healthy master"):
        rebalance.plan(_pmap(2), {0: "a", 1: "gone"}, ["a"])


NODES = """\
07c37dfeb2352 127.0.0.1:30004@40004 master - 0 1426238317239 4 connected
67ed2db8d677e 127.0.0.1:30002@40002,host-b master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7e 127.0.0.1:30003@40003 myself,master - 0 0 3 connected 10923-16383 [93->-07c37dfeb2352]
e7d1eecce10fd 127.0.0.1:30005@40005 slave 292f8b365bb7e 0 1426238316232 3 connected
"""


def test_cluster_nodes_parsing_finds_masters_and_open_slots():
    nodes = rebalance.parse_nodes(NODES)
    assert [n["addr"] for n in nodes] == ["127.0.0.1:30004", "127.0.0.1:30002",
                                          "127.0.0.1:30003", "127.0.0.1:30005"]
    assert nodes[2]["flags"] == {"myself", "master"} and nodes[3]["master_id"] == "292f8b365bb7e"
    assert rebalance.open_slots(NODES) == ["[93->-07c37dfeb2352]"]
    assert rebalance.open_slots(NODES.replace(" [93->-07c37dfeb2352]", "")) == []


def test_cli_needs_a_cluster(tmp_path):
    proc = run_cli("cluster", "add-master", "--dir", str(tmp_path / "none"))
    assert proc.returncode == 1 and "no local cluster" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("cluster", "rebalance", "--dir", str(tmp_path / "none"))
    assert proc.returncode != 0 and proc.stderr.startswith("error: ")


# --- growing a serving cluster ----------------------------------------------------------------

EXTRA = [  # one document for each partition that will move, so the new master serves content
    ("baikal", "Lake Baikal in Siberia is the deepest lake in the world, reaching 1,642 "
     "meters.", "What is the deepest lake in the world?"),
    ("sahara", "The Sahara is the largest hot desert and covers most of North Africa.",
     "What is the largest hot desert?"),
    ("jupiter", "Jupiter is the largest planet in the Solar System and the fifth from the "
     "Sun.", "Which is the largest planet in the Solar System?"),
    ("danube", "The Danube flows through ten countries and ends in the Black Sea.",
     "Where does the Danube end?"),
]


def documents_for(indices: list[int], count: int) -> list[Document]:
    """EXTRA documents with ids chosen so that each lands in one of ``indices``."""
    docs = []
    for (name, text, _), index in zip(EXTRA, indices, strict=False):
        n = 0
        while int(doc_key(f"{name}-{n}"), 16) % count != index:
            n += 1
        docs.append(Document(f"{name}-{n}", text, title=name.title()))
    return docs


def served(client) -> dict[int, str]:
    """Partition -> master of the worker whose fresh heartbeat lists it."""
    out = {}
    for beat in heartbeat.live_workers(client).values():
        if beat.model:
            for index in beat.partitions:
                out[index] = beat.master
    return out


def _same_answer(a, b) -> bool:
    return (a.answer, a.passage_id, a.start, a.end) == (b.answer, b.passage_id, b.start, b.end)


class _KeepAsking:
    """A thread that asks every question over and over (uncached), retrying once on a
    redirect or a missing reply, and logs each as (start, end, question, error or None)."""

    def __init__(self, client, questions: list[str], before: dict) -> None:
        self.asker = Asker(client, timeout_s=10)
        self.questions = questions
        self.before = before
        self.log: list[tuple[float, float, str, str | None]] = []
        self.changed: list[str] = []
        self.retried: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.wait_for(3)

    def wait_for(self, answered: int) -> None:
        while len(self.log) < answered:
            time.sleep(0.05)
            assert self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            q = self.questions[i % len(self.questions)]
            i += 1
            t0 = time.monotonic()
            try:
                try:
                    answer = self.asker.ask(q, use_cache=False)
                except (NoReply, *REDIRECTS) as exc:
                    self.retried.append(f"{type(exc).__name__}: {exc}")  # a retry is fine
                    answer = self.asker.ask(q, use_cache=False)
                if not _same_answer(answer, self.before[q]):
                    self.changed.append(q)
                self.log.append((t0, time.monotonic(), q, None))
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                self.log.append((t0, time.monotonic(), q, f"{type(exc).__name__}: {exc}"[:300]))


def _wait_served_by_owners(client, pmap, timeout: float = 30) -> None:
    """Until each partition is served beside its owner, or ``timeout`` (checked later)."""
    deadline = time.monotonic() + timeout
    while served(client) != partitions.owners(client, pmap) and time.monotonic() < deadline:
        time.sleep(0.2)


def _check_grown(client, pmap, handle, growth, moving: list[int]) -> None:
    """Every partition served beside its owner, four per master, models and the moved
    partitions' vectors on the new master."""
    owner = partitions.owners(client, pmap)
    assert served(client) == owner
    assert Counter(owner.values()) == Counter({m: 4 for m in [*handle.masters,
                                                              growth.master]})
    routing.refresh(client)  # store.tag_for reads the slot cache
    assert store.current_meta(client, growth.master) is not None
    assert store.current_meta(client, growth.master, kind="encoder") is not None
    for index in moving:  # the moved partitions' vectors are on the new master now
        assert client.execute_command("VCARD", keys.vectors(pmap[index].tag)) > 0
        assert partitions.owners(client, pmap)[index] == growth.master


def _new_worker_answers(client, master: str) -> None:
    """The worker beside the new master has read requests (heartbeats come every second)."""
    def asked():
        return [b for b in heartbeat.live_workers(client).values()
                if b.master == master and b.counters["requests"] > 0]

    until(asked, timeout=10, interval=0.2,
          what=f"the worker beside {master} read no request", error=AssertionError)


def test_add_master_while_asking(tmp_path, tiny_artifact, tiny_encoder_artifact):
    from loaders.writer import ingest, wait_indexed
    from shardqa.scale import add_master

    handle = start_cluster(tmp_path, masters=3)
    pool = WorkerPool(handle, tmp_path, **{"--log-level": "INFO"})
    try:
        client = start_pipeline(handle, pool, tiny_artifact)
        store.push(client, tiny_encoder_artifact, variant="int8")  # passages get vectors
        wait_reembedded(client)  # the corpus ingested before the push too: answers stay hybrid
        pmap = partitions.load(client)
        moving = [m.partition.index for m in rebalance.plan(
            pmap, partitions.owners(client, pmap), [*handle.masters, "~new"])]
        assert len(moving) == 4
        ingest(client, documents_for(moving, len(pmap)), progress=False)
        wait_indexed(client, timeout=60, progress=False)
        questions = QUESTIONS + [q for _, _, q in EXTRA]
        asker = Asker(client, timeout_s=20)
        before = {q: asker.ask(q, use_cache=False) for q in questions}
        assert {pmap.for_passage(a.passage_id).index for a in before.values()
                if a.passage_id} & set(moving), "no answer comes from a moving partition"

        asking = _KeepAsking(handle.client(), questions, before)
        asking.start()
        grow_start = time.monotonic()
        growth = add_master(handle.local, start_worker=lambda m: pool.start(m).pid,
                            show_progress=False)
        grow_end = time.monotonic()
        assert sorted(m.partition.index for m in growth.moves) == sorted(moving)
        assert {m.dest for m in growth.moves} == {growth.master}
        _wait_served_by_owners(client, pmap)
        asking.wait_for(len(asking.log) + 2 * len(questions))
        asking.stop()

        failures = [(q, err) for _, _, q, err in asking.log if err]
        assert failures == [], Counter(err for _, err in failures).most_common(5)
        assert asking.changed == []
        during = [e for e in asking.log if e[0] < grow_end and e[1] > grow_start]
        assert during, "no question was asked while the cluster grew"
        _check_grown(client, pmap, handle, growth, moving)
        print(f"asked {len(asking.log)}, {len(during)} while growing, "
              f"retried {asking.retried}")
        for q in questions:
            after = asker.ask(q, use_cache=False)
            assert _same_answer(after, before[q])
            assert after.score == pytest.approx(before[q].score, abs=1e-4)
        _new_worker_answers(client, growth.master)
        # balanced now: the CLI agrees there is nothing to move
        proc = run_cli("cluster", "rebalance", "--dir", handle.target.directory)
        assert proc.returncode == 0, proc.stderr
        assert "nothing to move" in proc.stdout
    finally:
        pool.stop_all()
        handle.local.down(purge=True)


def test_add_master_with_replica_moves_keys_and_streams(tmp_path):
    handle = start_cluster(tmp_path, masters=2, replicas=1, partition_count=4)
    try:
        client = handle.client()
        pmap = partitions.load(client)
        for p in pmap:
            for i in range(30):
                client.hset(keys.passage(p.tag, f"{p.index}.{i}"), "text", f"passage {i}")
            stream = keys.request_stream(p.tag)
            client.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
            client.xadd(stream, {"q": "pending"})
            client.xreadgroup(keys.WORKER_GROUP, "worker-old", {stream: ">"})
            for i in range(3):  # the partition's vector set (Redis 8) moves with it
                client.execute_command("VADD", keys.vectors(p.tag), "VALUES", 2, 1, i,
                                       f"{p.index}.{i}")
        proc = run_cli("cluster", "add-master", "--dir", handle.target.directory, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "no local workers are running" in proc.stdout
        spec = handle.local.spec()
        new_master, new_replica = spec.nodes[-2:]
        assert (new_master.role, new_replica.role) == ("master", "replica")
        assert new_replica.master_port == new_master.port
        client = handle.client()
        routing.refresh(client)
        owner = partitions.owners(client, pmap)
        assert sorted(Counter(owner.values()).values()) == [1, 1, 2]
        new_name = f"{spec.host}:{new_master.port}"
        assert new_name in owner.values()
        moved_slot = pmap[next(i for i, m in owner.items() if m == new_name)].slot
        deadline = time.monotonic() + 30  # the slot table lists a replica once it has synced
        while True:
            replicas = partitions.slot_table(client)
            holder = next(v for (lo, hi), v in replicas.items() if lo <= moved_slot <= hi)
            if holder["replicas"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert holder["primary"] == new_name
        assert holder["replicas"] == [f"{spec.host}:{new_replica.port}"]
        for p in pmap:  # every key arrived, streams with their group and pending entries
            assert all(client.hget(keys.passage(p.tag, f"{p.index}.{i}"), "text") ==
                       f"passage {i}".encode() for i in range(30))
            group = client.xinfo_groups(keys.request_stream(p.tag))[0]
            assert group["name"] == b"workers" and group["pending"] == 1
            assert client.execute_command("VCARD", keys.vectors(p.tag)) == 3
            assert client.execute_command("VSIM", keys.vectors(p.tag), "ELE",
                                          f"{p.index}.0")[0] == f"{p.index}.0".encode()
        # a restart brings the grown cluster back whole
        handle.local.down()
        handle.local.up()
        assert len(handle.local.running_nodes()) == 6
    finally:
        handle.local.down(purge=True)
