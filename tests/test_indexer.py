"""The indexer: ingest entries -> a list of ingest stages (issue 12: a new index is a stage).

Real cluster, in-process parts of one shard, no reader model (the windows stage waits)."""

from __future__ import annotations

import json

from cluster import keys, partitions
from gears import ranking
from gears.consumer import StreamConsumer
from gears.counters import Counters
from gears.follower import Shard
from gears.indexer import Bm25Stage, Indexer
from gears.model_slot import ModelSlot
from gears.settings import WorkerSettings
from gears.windows import TokenizeStage, TokenWindows
from loaders.documents import Document
from loaders.passages import split_passages
from loaders.writer import ingest


class Recorder:
    """A stage that remembers what it was given (what an embedding stage would get)."""

    name = "recorder"

    def __init__(self):
        self.calls: list[tuple[int, dict, list]] = []

    def apply(self, partition, puts, deletes) -> int:
        self.calls.append((partition.index, dict(puts), sorted(deletes)))
        return 0


def shard_indexer(cluster, stages_after: list):
    client = cluster.client()
    pmap = partitions.load(client)
    shard = Shard(cluster.target, client, cluster.masters[0], pmap)
    shard.refresh()
    settings, counters = WorkerSettings(), Counters()
    consumer = StreamConsumer(shard, "test-indexer", settings, counters)
    consumer.join(set())
    windows = TokenWindows(shard, ModelSlot(client, settings))
    stages = [TokenizeStage(windows), Bm25Stage(shard), *stages_after]
    return client, shard, Indexer(shard, consumer, stages, settings, counters), counters


def drain(indexer) -> int:
    total = 0
    for _ in range(20):
        total += indexer.serve()
    return total


def test_every_stage_gets_the_puts_and_deletes_of_its_partition(cluster):
    recorder = Recorder()
    client, shard, indexer, counters = shard_indexer(cluster, [recorder])
    mine = {p.index for p in shard.owned}
    long = "Otters number {i}. " * 60 + "\n\n" + "They swim. " * 80
    docs = [d for d in (Document(f"doc{i}", long.format(i=i), title=f"T{i}") for i in range(40))
            if shard.pmap.for_doc(d.doc_id).index in mine][:3]
    expected = {p.pid: (p.title, p.text) for d in docs for p in split_passages(d)}
    assert len(expected) == 6  # two passages per document
    ingest(client, docs, progress=False)
    gen = int(client.get(keys.generation()) or 0)
    assert drain(indexer) == 6
    got = {pid: value for _, puts, _ in recorder.calls for pid, value in puts.items()}
    assert got == expected
    assert all(index in mine for index, _, _ in recorder.calls)
    assert int(client.get(keys.generation())) == gen + 1  # the BM25 stage changed the corpus
    assert ranking.rank(client, shard.pmap, "swim")  # and indexed it

    recorder.calls.clear()
    shorter = Document(docs[0].doc_id, "Otters only.", title=docs[0].title)
    ingest(client, [shorter], progress=False)
    drain(indexer)
    deletes = [d for _, _, dels in recorder.calls for d in dels]
    assert deletes == [partitions.passage_id(docs[0].doc_id, 1)]
    assert counters.ingested == 6 + 2 and counters.dead == 0


def test_a_stage_that_fails_on_one_entry_dead_letters_only_that_entry(cluster):
    class Picky:
        name = "picky"

        def apply(self, partition, puts, deletes) -> int:
            if any("poison" in text for _, text in puts.values()):
                raise RuntimeError("cannot take this passage")
            return 0

    client, shard, indexer, counters = shard_indexer(cluster, [Picky()])
    mine = {p.index for p in shard.owned}
    same = [f"d{i}" for i in range(200) if shard.pmap.for_doc(f"d{i}").index == min(mine)][:3]
    docs = [Document(same[0], "Fine text."), Document(same[1], "A poison passage."),
            Document(same[2], "More fine text.")]
    ingest(client, docs, progress=False)
    assert drain(indexer) == 3
    tag = shard.pmap[min(mine)].tag
    dead = client.xrange(keys.dead_letters(tag))
    assert len(dead) == 1 and b"cannot take this passage" in dead[0][1][b"reason"]
    assert counters.dead == 1
    # the good entries went through every stage; stages before the failing one keep their
    # (idempotent) work on the bad one, which waits in the dead letters for an operator
    lengths = client.hgetall(keys.index_lengths(tag))
    assert {partitions.passage_id(same[0], 0).encode(),
            partitions.passage_id(same[2], 0).encode()} <= set(lengths)
    assert json.loads(dead[0][1][b"fields"])["pid"] == partitions.passage_id(same[1], 0)
    assert client.xpending(keys.ingest_stream(tag), keys.WORKER_GROUP)["pending"] == 0
