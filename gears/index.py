"""The partition's BM25 index, written by the shard worker that owns the partition.

Per partition (all under its hash tag): one sorted set of postings per term (member passage
id, score term frequency), a hash of document lengths, a hash of document frequencies, and
partition statistics (passages, total length). For every indexed passage the exact terms
it was indexed with are kept, so re-indexing first removes exactly those: indexing the same
passage twice leaves the same state as once, which makes at-least-once delivery safe.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from cluster import keys
from gears import analyzer


@dataclass
class IndexChange:
    """What one batch did to a partition's index."""

    indexed: int = 0
    removed: int = 0
    unchanged: int = 0


def passage_terms(title: str, text: str) -> Counter[str]:
    """Terms a passage is indexed under: its title and its text."""
    return analyzer.term_frequencies(f"{title}\n{text}" if title else text)


def apply(conn, tag: str, puts: dict[str, Counter[str]], deletes: list[str]) -> IndexChange:
    """Index ``puts`` (pid -> term frequencies) and remove ``deletes`` in one transaction.

    ``conn`` is a client of the master that owns the partition's slot.
    """
    pids = list(puts) + [p for p in deletes if p not in puts]
    if not pids:
        return IndexChange()
    read = conn.pipeline(transaction=False)
    for pid in pids:
        read.get(keys.index_doc_terms(tag, pid))
    olds = {pid: _decode(raw) for pid, raw in zip(pids, read.execute(), strict=True)}

    change = IndexChange()
    tx = conn.pipeline(transaction=True)
    n_delta = 0
    total_delta = 0
    df_delta: Counter[str] = Counter()
    # term -> {pid: tf, 0 to remove}: the batch's postings changes go to Redis in one call
    # (functions.lua: postings); a command per term and passage made the client's command
    # handling, not Redis, the bound on indexing speed
    postings: dict[str, dict[str, int]] = {}
    lengths: dict[str, int] = {}
    doc_terms: dict[str, str] = {}
    gone_pids: list[str] = []
    for pid in pids:
        old = olds[pid]
        new = puts.get(pid)
        if new is not None and old == new:
            change.unchanged += 1
            continue
        old = old or Counter()
        new_terms = new or Counter()
        for term in old.keys() - new_terms.keys():
            postings.setdefault(term, {})[pid] = 0
            df_delta[term] -= 1
        for term, tf in new_terms.items():
            if old.get(term) != tf:
                postings.setdefault(term, {})[pid] = tf
            if term not in old:
                df_delta[term] += 1
        old_len = sum(old.values())
        had = olds[pid] is not None
        if new is None:
            gone_pids.append(pid)
            n_delta -= 1 if had else 0
            total_delta -= old_len
            change.removed += 1
        else:
            new_len = sum(new_terms.values())
            lengths[pid] = new_len
            doc_terms[keys.index_doc_terms(tag, pid)] = _encode(new_terms)
            n_delta += 0 if had else 1
            total_delta += new_len - old_len
            change.indexed += 1
    if lengths:
        tx.hset(keys.index_lengths(tag), mapping=lengths)
        tx.mset(doc_terms)  # one slot: every key carries the partition's hash tag
    if gone_pids:
        tx.hdel(keys.index_lengths(tag), *gone_pids)
        tx.hdel(keys.index_windows(tag), *gone_pids)
        tx.delete(*[keys.index_doc_terms(tag, pid) for pid in gone_pids],
                  *[keys.passage(tag, pid) for pid in gone_pids])
    if postings:
        terms = list(postings)
        args: list = []
        for term in terms:
            members = postings[term]
            args.append(len(members))
            for pid, tf in members.items():
                args += (tf, pid)
        tx.fcall("postings", len(terms), *[keys.index_term(tag, t) for t in terms], *args)
    deltas = [x for term, delta in df_delta.items() if delta for x in (term, delta)]
    if deltas:
        tx.fcall("counts", 1, keys.index_df(tag), *deltas)
    if n_delta:
        tx.hincrby(keys.index_stats(tag), "n", n_delta)
    if total_delta:
        tx.hincrby(keys.index_stats(tag), "total", total_delta)
    if len(tx):
        tx.execute()
    return change


def _encode(tf: Counter[str]) -> str:
    return json.dumps(tf, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _decode(raw: bytes | None) -> Counter[str] | None:
    if raw is None:
        return None
    return Counter(json.loads(raw))
