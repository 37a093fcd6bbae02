"""Issue 13: dense retrieval over the partitions' vector sets (real Redis 8 cluster) and the
fusion rules."""

from __future__ import annotations

import numpy as np
import pytest

from cluster import keys, partitions, routing
from gears import dense, fusion, index, retrieval
from gears.ranking import Ranked


def ranked(*pids: str, scores=None) -> list[Ranked]:
    scores = scores or [float(len(pids) - i) for i in range(len(pids))]
    return [Ranked(pid, 0, s) for pid, s in zip(pids, scores, strict=True)]


def test_rrf_sums_reciprocal_ranks_with_weights():
    lists = {"bm25": ranked("a", "b", "c"), "dense": ranked("c", "d")}
    fused = fusion.rrf(lists, k=60)
    scores = {f.pid: f.score for f in fused}
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["a"] == pytest.approx(1 / 61) and scores["d"] == pytest.approx(1 / 62)
    assert [f.pid for f in fused] == ["c", "a", "b", "d"]  # b and d tie: by id
    assert next(f for f in fused if f.pid == "c").ranks == {"bm25": 3, "dense": 1}
    heavy = fusion.rrf(lists, k=60, weights={"dense": 3.0})
    assert [f.pid for f in heavy][:2] == ["c", "d"]  # dense's picks win
    with pytest.raises(ValueError):
        fusion.rrf(lists, weights={"colbert": 1.0})


def test_weighted_fusion_normalizes_each_list():
    bm25 = ranked("a", "b", "c", scores=[30.0, 20.0, 10.0])  # BM25 scale
    dns = ranked("b", "a", scores=[0.9, 0.5])  # cosine scale
    assert fusion.normalized(bm25) == {"a": 1.0, "b": 0.5, "c": 0.0}
    fused = fusion.weighted({"bm25": bm25, "dense": dns}, {"bm25": 0.3, "dense": 0.7})
    scores = {f.pid: f.score for f in fused}
    assert scores == pytest.approx({"a": 0.3, "b": 0.15 + 0.7, "c": 0.0})
    assert fused[0].pid == "b" and fused[0].ranks == {"bm25": 2, "dense": 1}
    assert fusion.normalized(ranked("x", scores=[4.0])) == {"x": 1.0}


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_dense_search_over_every_partition(cluster):
    """Vectors in the vector sets of several partitions on different masters: VSIM finds the
    nearest across all of them, as the api user, with cosine scores."""
    admin = cluster.client()
    pmap = partitions.load(admin)
    rng = np.random.default_rng(7)
    pids = [partitions.passage_id(f"doc{i}", 0) for i in range(60)]
    vectors = {pid: unit(rng.normal(size=16)) for pid in pids}
    for pid, vec in vectors.items():
        tag = pmap.for_passage(pid).tag
        admin.execute_command("VADD", keys.vectors(tag), "FP32", dense.vector_blob(vec), pid,
                              "NOQUANT")
    owners = {partitions.owners(admin, pmap)[pmap.for_passage(p).index] for p in vectors}
    assert len(owners) == len(cluster.masters)  # the vectors are spread over every master
    query = unit(vectors[pids[3]] + 0.05 * rng.normal(size=16))
    found = dense.search(cluster.client_as("api"), pmap, query, k=5)
    exact = sorted(vectors, key=lambda p: -float(vectors[p] @ query))[:5]
    assert [r.pid for r in found] == exact and found[0].pid == pids[3]
    for r in found:
        assert r.score == pytest.approx(float(vectors[r.pid] @ query), abs=1e-4)
        assert r.partition == pmap.for_passage(r.pid).index
    assert dense.search(admin, pmap, query, k=2, ef=50)[0].pid == pids[3]


def test_dense_search_of_an_empty_corpus_is_empty(cluster):
    pmap = partitions.load(cluster.client())
    assert dense.search(cluster.client_as("api"), pmap, unit([1, 0, 0, 0]), k=3) == []


def test_bench_recall_and_recommendation():
    from bench.retrieval_fusion import Question, recall, recommend

    qs = [Question("q1", "a"), Question("q2", "z"), Question("q3", "c")]
    runs = [ranked("a", "b"), ranked("b", "c", "d", "e", "f", "z"), ranked("b", "c")]
    assert recall(runs, qs, ks=(1, 5, 20)) == {"R@1": 33.3, "R@5": 66.7, "R@20": 100.0}
    table = {"bm25": {"s": {"R@1": 90.0, "R@5": 90.0, "R@20": 90.0}},
             "rrf a": {"s": {"R@1": 50.0, "R@5": 80.0, "R@20": 99.0}},
             "score b": {"s": {"R@1": 60.0, "R@5": 80.0, "R@20": 90.0}}}
    assert recommend(table)["method"] == "score b"  # fusions only; R@5 tie -> R@1


def test_deeper_asks_only_partitions_that_may_hold_more():
    """A partition is asked again when its depth-th candidate still scores at least the
    candidates-th best returned (a tie included), or when fewer than candidates came back."""
    def got(index, *scores):
        return [(-s, f"p{index}.{i}", index) for i, s in enumerate(scores)]

    found = {0: got(0, 9.0, 8.0), 1: got(1, 7.0, 5.0), 2: got(2, 6.0), 3: got(3, 4.0, 3.0)}
    # every returned: 9 8 7 6 5 4 3; the 4th best is 6: partition 0 (last 8) and 1 (last 5
    # < 6: no), 2 returned less than the depth (it has no more), 3 is below
    assert retrieval.deeper(found, depth=2, candidates=4) == [0]
    assert retrieval.deeper(found, depth=2, candidates=5) == [0, 1]  # 5th best is 5: a tie
    assert retrieval.deeper(found, depth=2, candidates=20) == [0, 1, 3]  # too few returned


def test_a_crowded_partition_gives_the_fused_list_of_full_depth(cluster):
    """One partition holds most of both lists' best candidates (an article's paragraphs all
    hash to its partition): a first round trip of a few per partition, then that partition
    again, gives exactly the fused candidates of asking every partition for all of them, as
    the api user; the other partitions are not asked twice."""
    admin = cluster.client()
    pmap = partitions.load(admin)
    rng = np.random.default_rng(11)
    crowded = pmap.for_passage(partitions.passage_id("lighthouse-0", 0)).index
    docs = [f"lighthouse-{i}" for i in range(400)]
    near = [d for d in docs if pmap.for_passage(partitions.passage_id(d, 0)).index == crowded]
    far = [d for d in docs if d not in near][:60]
    topic = unit(rng.normal(size=16))
    puts: dict[int, dict] = {}
    for i, doc in enumerate(near[:24] + far):
        pid = partitions.passage_id(doc, 0)
        p = pmap.for_passage(pid)
        close = doc in near
        words = "lighthouse keeper " * (1 + i % 4 if close else 1) + f"filler{i % 7} tide"
        puts.setdefault(p.index, {})[pid] = index.passage_terms("", words)
        vector = unit(topic * (3.0 if close else 0.5) + rng.normal(size=16))
        admin.execute_command("VADD", keys.vectors(p.tag), "FP32", dense.vector_blob(vector),
                              pid, "NOQUANT")
    for p in pmap:
        index.apply(routing.on_owner(admin, keys.index_stats(p.tag)), p.tag,
                    puts.get(p.index, {}), [])
        admin.hset(keys.vector_meta(p.tag), keys.VECTOR_ENCODER, "enc")
    api = cluster.client_as("api")
    plan = retrieval.DensePlan({}, {p.index: "enc" for p in pmap})
    vectors = {"enc": unit(topic + 0.1 * rng.normal(size=16))}

    def ask(depth):
        found = retrieval.hybrid(api, pmap, "who kept the lighthouse", 40, plan, vectors,
                                 candidates=20, depth=depth)
        return [(f.pid, f.score, f.ranks) for f in found.passages]

    full = ask(20)
    top = full[:20]
    assert sum(pmap.for_passage(pid).index == crowded for pid, _, _ in top) > 12
    assert {"bm25", "dense"} <= {name for _, _, ranks in full for name in ranks}
    asked = []
    shipped = retrieval._Found.fetch

    def counted(self, client, parts, *args):
        asked.append(sorted(p.index for p in parts))
        return shipped(self, client, parts, *args)

    retrieval._Found.fetch = counted
    try:
        assert ask(3) == full
    finally:
        retrieval._Found.fetch = shipped
    assert asked[0] == sorted(p.index for p in pmap) and [crowded] in asked[1:]
    assert len(asked) < len(pmap.partitions)  # not every partition asked again
