"""Issue 4: the BM25 index kept by the shard worker and the Lua rank function."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import keys, partitions
from gears import analyzer, index, ranking

CORPUS = {
    "alpha": ("Alpha", "The quick brown fox jumps over the lazy dog. The fox is quick."),
    "beta": ("Beta", "A lazy afternoon: the dog sleeps and the cat watches the dog."),
    "gamma": ("Gamma", "Quantum chromodynamics describes the strong interaction of quarks."),
    "delta": ("Delta", "The fox and the hound were friends; the hound was a dog."),
    "eps": ("Epsilon", "Brown bears eat salmon in the rivers of Alaska every summer."),
    "zeta": ("Zeta", "Salmon swim upstream; bears wait for salmon at the waterfalls."),
}


def put_corpus(client, pmap, corpus):
    """Index passages the way the worker does: group by partition, one apply per partition."""
    by_tag: dict[str, dict] = {}
    pids = {}
    for doc_id, (title, text) in corpus.items():
        pid = partitions.passage_id(doc_id, 0)
        pids[doc_id] = pid
        tag = pmap.for_passage(pid).tag
        client.hset(keys.passage(tag, pid), mapping={"title": title, "text": text,
                                                     "doc_id": doc_id, "pos": 0})
        by_tag.setdefault(tag, {})[pid] = index.passage_terms(title, text)
    for tag, puts in by_tag.items():
        node = client.get_redis_connection(client.get_node_from_key(keys.index_stats(tag)))
        index.apply(node, tag, puts, [])
    return pids


def reference_bm25(corpus, question, k1=ranking.K1, b=ranking.B):
    docs = {d: index.passage_terms(t, x) for d, (t, x) in corpus.items()}
    n = len(docs)
    avgdl = sum(sum(tf.values()) for tf in docs.values()) / n
    scores = {}
    for d, tf in docs.items():
        dl = sum(tf.values())
        s = 0.0
        for term in analyzer.query_terms(question):
            df = sum(1 for other in docs.values() if term in other)
            if not df or term not in tf:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            s += idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * dl / avgdl))
        if s > 0:
            scores[d] = s
    return scores


@pytest.fixture
def indexed(cluster):
    client = cluster.client()
    pmap = partitions.load(client)
    pids = put_corpus(client, pmap, CORPUS)
    return client, pmap, pids


def test_rare_term_ranks_first(indexed):
    client, pmap, pids = indexed
    ranked = ranking.rank(client, pmap, "Which interaction do quarks have?", k=3)
    assert ranked[0].pid == pids["gamma"]
    assert ranked[0].partition == pmap.for_passage(pids["gamma"]).index


@pytest.mark.parametrize("question", [
    "the lazy dog", "quick brown fox", "salmon bears", "Where do bears eat salmon?", "hound dog",
])
def test_scores_match_reference(indexed, question):
    client, pmap, pids = indexed
    expected = reference_bm25(CORPUS, question)
    ranked = ranking.rank(client, pmap, question, k=10)
    got = {d: r.score for r in ranked for d, pid in pids.items() if pid == r.pid}
    assert set(got) == set(expected)
    for d, score in expected.items():
        assert got[d] == pytest.approx(score, rel=1e-9)
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)


def test_stopword_only_and_unknown_terms_rank_nothing(indexed):
    client, pmap, _ = indexed
    assert ranking.rank(client, pmap, "what is the", k=5) == []
    assert ranking.rank(client, pmap, "xylophone", k=5) == []


def test_reindex_is_idempotent_and_replacement_leaves_index(indexed):
    client, pmap, pids = indexed
    before = snapshot(client, pmap)
    put_corpus(client, pmap, CORPUS)  # same passages again: same state
    assert snapshot(client, pmap) == before
    changed = dict(CORPUS, gamma=("Gamma", "Gluons bind quarks; nothing about interaction."))
    put_corpus(client, pmap, changed)
    assert ranking.rank(client, pmap, "chromodynamics", k=5) == []
    assert ranking.rank(client, pmap, "gluons", k=5)[0].pid == pids["gamma"]
    # delete: leaves the index and the passage is gone
    pid = pids["gamma"]
    tag = pmap.for_passage(pid).tag
    node = client.get_redis_connection(client.get_node_from_key(keys.index_stats(tag)))
    index.apply(node, tag, {}, [pid])
    assert ranking.rank(client, pmap, "gluons", k=5) == []
    assert not client.exists(keys.passage(tag, pid))
    stats = ranking.global_stats(client, pmap, ["quarks"])
    assert stats.passages == len(CORPUS) - 1 and stats.df["quarks"] == 0


def test_capped_rank_scores_every_passage_it_finds_exactly(cluster):
    """cap=1: one posting per term and partition is read, yet found passages score exactly."""
    client = cluster.client()
    pmap = partitions.load(client)
    corpus = {f"d{i}": ("", "dog " * (1 + i % 4) + f"filler{i}") for i in range(48)}
    corpus["u"] = ("", "a dog met a unicorn")
    pids = put_corpus(client, pmap, corpus)
    question = "the dog and the unicorn"
    exact = {r.pid: r.score for r in ranking.rank(client, pmap, question, k=100, cap=0)}
    capped = ranking.rank(client, pmap, question, k=100, cap=1)
    assert len(exact) == len(corpus) and len(capped) < len(exact)
    assert capped[0].pid == pids["u"]
    for r in capped:
        assert r.score == pytest.approx(exact[r.pid], rel=1e-9)


def zipf_text(rng, words: list[str], shape: float, shortest: int, longest: int) -> str:
    """A Zipf-like passage: low-numbered words are common, high-numbered ones rare."""
    top = len(words) - 1
    return " ".join(words[min(top, int(rng.paretovariate(shape)) - 1)]
                    for _ in range(rng.randint(shortest, longest)))


def test_maxscore_top_k_equals_reading_every_posting(cluster):
    """Rare terms first, common ones skipped once they cannot matter: the same top k."""
    import random

    client = cluster.client()
    pmap = partitions.load(client)
    rng = random.Random(7)
    words = [f"w{i}" for i in range(40)]
    corpus = {}
    for d in range(120):
        corpus[f"z{d}"] = ("", zipf_text(rng, words, 1.1, 3, 30))
    put_corpus(client, pmap, corpus)
    for _ in range(40):
        question = " ".join(rng.sample(words, rng.randint(1, 6)))
        expected = reference_bm25(corpus, question)
        for k in (1, 3, 10):
            got = ranking.rank(client, pmap, question, k=k, cap=0)
            want = sorted(expected.values(), reverse=True)[:k]
            assert [r.score for r in got] == pytest.approx(want, rel=1e-9), question
            for r in got:  # and each one is the passage that really has that score
                doc = next(d for d in corpus if partitions.passage_id(d, 0) == r.pid)
                assert r.score == pytest.approx(expected[doc], rel=1e-9)


def test_common_terms_are_not_read_when_rare_ones_decide(cluster):
    """One partition: a rare term's passage wins by more than a common term could add, so
    the common term's postings are never fetched (counted by Redis' command stats)."""
    client = cluster.client()
    pmap = partitions.load(client)
    tag = pmap[0].tag
    node = client.get_redis_connection(client.get_node_from_key(keys.index_stats(tag)))
    puts = {f"{tag}-d{i}": index.passage_terms("", "dog " * (1 + i % 3) + "filler")
            for i in range(60)}
    puts[f"{tag}-u"] = index.passage_terms("", "a dog met a unicorn")
    for pid in puts:
        node.hset(keys.passage(tag, pid), mapping={"text": "x"})
    index.apply(node, tag, puts, [])
    stats = ranking.global_stats(client, pmap, ["dog", "unicorn"])
    weights = [repr(stats.idf("dog")), repr(stats.idf("unicorn"))]
    term_keys = [keys.index_term(tag, "dog"), keys.index_term(tag, "unicorn")]

    def rank(k: int) -> list:
        before = zrange_calls(node)
        reply = node.fcall_ro("rank", 3, keys.index_lengths(tag), *term_keys, k,
                              ranking.K1, ranking.B, repr(stats.avgdl), 0, *weights)
        # every term's highest tf is peeked at first (one ZRANGE each): not counted
        return [r.decode() if isinstance(r, bytes) else r for r in reply[::2]], \
            zrange_calls(node) - before - len(term_keys)

    top, reads = rank(1)
    assert top == [f"{tag}-u"] and reads == 1  # unicorn's postings only
    top, reads = rank(5)
    assert top[0] == f"{tag}-u" and len(top) == 5 and reads == 2  # the top 5 needs the dogs


def zrange_calls(node) -> int:
    return int(node.info("commandstats").get("cmdstat_zrange", {}).get("calls", 0))


def one_partition_corpus(client, pmap, texts: dict[str, str]):
    """Index ``texts`` (name -> text) all in partition 0: (node, tag, name -> passage id)."""
    tag = pmap[0].tag
    node = client.get_redis_connection(client.get_node_from_key(keys.index_stats(tag)))
    puts = {f"{tag}-{name}": index.passage_terms("", text) for name, text in texts.items()}
    for pid in puts:
        node.hset(keys.passage(tag, pid), mapping={"text": "x"})
    for start in range(0, len(puts), 500):
        index.apply(node, tag, dict(list(puts.items())[start:start + 500]), [])
    return node, tag, {name: f"{tag}-{name}" for name in texts}


def test_long_postings_pruned_by_bounds_give_the_exact_top_k_ties_included(cluster):
    """Postings longer than a read chunk, copies with equal scores, a Zipf vocabulary: the
    rank that stops reading a term's postings and drops hopeless candidates early returns
    exactly the top k (scores and, on ties, the smaller passage id) of scoring every passage,
    with and without a cap that covers every posting."""
    import random

    client = cluster.client()
    pmap = partitions.load(client)
    rng = random.Random(11)
    words = [f"v{i}" for i in range(60)]
    texts = {}
    for d in range(900):
        texts[f"n{d:04d}"] = zipf_text(rng, words, 0.9, 3, 40)
        if d % 7 == 0:  # an exact copy under another id: the same score
            texts[f"c{d:04d}"] = texts[f"n{d:04d}"]
    node, tag, pids = one_partition_corpus(client, pmap, texts)
    corpus = {pids[name]: ("", text) for name, text in texts.items()}
    for _ in range(30):
        question = " ".join(rng.sample(words[:30], rng.randint(1, 5)))
        terms = [t for t in analyzer.query_terms(question)
                 if client.zcard(keys.index_term(tag, t))]
        if not terms:
            continue
        stats = ranking.global_stats(client, pmap, terms)
        expected = reference_bm25(corpus, " ".join(terms))
        for k in (1, 5, 20):
            want = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            for cap in (0, 100_000):
                reply = node.fcall_ro("rank", 1 + len(terms), keys.index_lengths(tag),
                                      *[keys.index_term(tag, t) for t in terms], k,
                                      ranking.K1, ranking.B, repr(stats.avgdl), cap,
                                      *[repr(stats.idf(t)) for t in terms])
                got = [(reply[i].decode(), float(reply[i + 1])) for i in range(0, len(reply), 2)]
                assert [pid for pid, _ in got] == [pid for pid, _ in want], (question, k, cap)
                assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-9)


def test_a_terms_postings_stop_once_no_unread_one_can_enter_the_top_k(cluster):
    """2,000 passages hold "dog" once, one holds it 10 times, one 30 times with "unicorn".
    k=1: unicorn's passage wins by more than dog could add elsewhere, dog is never read;
    k=2: the first chunk of dog's postings (highest tf first) settles it, the rest (tf 1)
    are never read; k=2,000: every chunk is."""
    client = cluster.client()
    pmap = partitions.load(client)
    texts = {f"d{i:04d}": f"dog filler{i % 50} more{i % 13}" for i in range(2000)}
    texts["u"] = "unicorn " + "dog " * 30
    texts["h"] = "dog " * 10
    node, tag, pids = one_partition_corpus(client, pmap, texts)
    terms = ["dog", "unicorn"]
    stats = ranking.global_stats(client, pmap, terms)
    args = [keys.index_lengths(tag), *[keys.index_term(tag, t) for t in terms]]

    def rank(k: int) -> tuple[list[str], int]:
        before = zrange_calls(node)
        reply = node.fcall_ro("rank", 3, *args, k, ranking.K1, ranking.B, repr(stats.avgdl),
                              0, *[repr(stats.idf(t)) for t in terms])
        return [r.decode() for r in reply[::2]], zrange_calls(node) - before - len(terms)

    top, reads = rank(1)
    assert top == [pids["u"]] and reads == 1  # unicorn's one posting
    top, reads = rank(2)
    assert top == [pids["u"], pids["h"]] and reads == 2  # and dog's first chunk
    top, reads = rank(2000)  # every passage is in the top k: every chunk is read
    assert top[0] == pids["u"] and len(top) == 2000 and reads > 2


def snapshot(client, pmap):
    state = {}
    for p in pmap:
        state[p.tag] = (
            client.hgetall(keys.index_stats(p.tag)), client.hgetall(keys.index_lengths(p.tag)),
            {k: v for k, v in client.hgetall(keys.index_df(p.tag)).items() if int(v)},
        )
    return state


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_analyzer_is_total_and_consistent(text):
    terms = analyzer.terms(text)
    assert all(t and t not in analyzer.STOPWORDS for t in terms)
    assert all(len(t) <= analyzer.MAX_TERM_CHARS for t in terms)
    assert Counter(terms) == analyzer.term_frequencies(text)
    assert set(analyzer.query_terms(text)) <= set(terms)


def test_rank_floor_keeps_candidates_at_or_above_the_share_of_the_best():
    ranked = [ranking.Ranked("a.0", 0, 10.0), ranking.Ranked("b.0", 1, 5.0),
              ranking.Ranked("c.0", 2, 4.99)]
    assert [r.pid for r in ranking.above_floor(ranked, 0.5)] == ["a.0", "b.0"]
    assert ranking.above_floor(ranked, 0) == ranked
    assert ranking.above_floor([], 0.5) == []
