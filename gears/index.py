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
from dataclasses import dataclass, field

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
    plan = _Plan()
    for pid in pids:
        plan.add(tag, pid, olds[pid], puts.get(pid))
    plan.write(conn, tag)
    return plan.change


@dataclass
class _Plan:
    """What a batch changes in a partition's index, gathered before one transaction."""

    change: IndexChange = field(default_factory=IndexChange)
    n_delta: int = 0
    total_delta: int = 0
    df_delta: Counter[str] = field(default_factory=Counter)
    # term -> {pid: tf, 0 to remove}: the batch's postings changes go to Redis in one call
    # (functions.lua: postings); a command per term and passage made the client's command
    # handling, not Redis, the bound on indexing speed
    postings: dict[str, dict[str, int]] = field(default_factory=dict)
    lengths: dict[str, int] = field(default_factory=dict)
    doc_terms: dict[str, str] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)

    def add(self, tag: str, pid: str, old: Counter[str] | None, new: Counter[str] | None
            ) -> None:
        """Plan one passage: from its last indexed terms ``old`` to ``new`` (None: removed)."""
        if new is not None and old == new:
            self.change.unchanged += 1
            return
        had, old = old is not None, old or Counter()
        new_terms = new or Counter()
        for term in old.keys() - new_terms.keys():
            self.postings.setdefault(term, {})[pid] = 0
            self.df_delta[term] -= 1
        for term, tf in new_terms.items():
            if old.get(term) != tf:
                self.postings.setdefault(term, {})[pid] = tf
            if term not in old:
                self.df_delta[term] += 1
        old_len = sum(old.values())
        if new is None:
            self.gone.append(pid)
            self.n_delta -= 1 if had else 0
            self.total_delta -= old_len
            self.change.removed += 1
        else:
            new_len = sum(new_terms.values())
            self.lengths[pid] = new_len
            self.doc_terms[keys.index_doc_terms(tag, pid)] = _encode(new_terms)
            self.n_delta += 0 if had else 1
            self.total_delta += new_len - old_len
            self.change.indexed += 1

    def write(self, conn, tag: str) -> None:
        tx = conn.pipeline(transaction=True)
        if self.lengths:
            tx.hset(keys.index_lengths(tag), mapping=self.lengths)
            tx.mset(self.doc_terms)  # one slot: every key carries the partition's hash tag
        if self.gone:
            tx.hdel(keys.index_lengths(tag), *self.gone)
            tx.hdel(keys.index_windows(tag), *self.gone)
            tx.delete(*[keys.index_doc_terms(tag, pid) for pid in self.gone],
                      *[keys.passage(tag, pid) for pid in self.gone])
        if self.postings:
            terms = list(self.postings)
            args: list = []
            for term in terms:
                members = self.postings[term]
                args.append(len(members))
                for pid, tf in members.items():
                    args += (tf, pid)
            tx.fcall("postings", len(terms), *[keys.index_term(tag, t) for t in terms], *args)
        deltas = [x for term, delta in self.df_delta.items() if delta for x in (term, delta)]
        if deltas:
            tx.fcall("counts", 1, keys.index_df(tag), *deltas)
        if self.n_delta:
            tx.hincrby(keys.index_stats(tag), "n", self.n_delta)
        if self.total_delta:
            tx.hincrby(keys.index_stats(tag), "total", self.total_delta)
        if len(tx):
            tx.execute()


def _encode(tf: Counter[str]) -> str:
    return json.dumps(tf, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _decode(raw: bytes | None) -> Counter[str] | None:
    if raw is None:
        return None
    return Counter(json.loads(raw))
