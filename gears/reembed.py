"""The re-embed job: a partition's vectors re-made when the shard's encoder changes.

A partition is settled when ``keys.vector_meta`` says its vector set was made by the shard's
current encoder and no build is under way (gears/embedder.py). Any other partition the worker
owns (vectors of an older encoder, of none yet, or from before the metadata existed) is
re-embedded: the worker builds ``keys.vectors_next(tag)`` with its encoder, one batch of
``reembed_batch`` passages per step, walking the partition's BM25 lengths hash with HSCAN
(every indexed passage once), and when the walk is over renames the new set over the old one
and records the new encoder in the same transaction. Questions meanwhile search the old set
with the old encoder (gears/retrieval.py), so two encoders' vectors never meet.

Nothing is lost to a crash: the set being built is in Redis, and a worker that starts again
walks the partition from the start, embedding only the passages not yet in it (VISMEMBER
and ``emb_sig``), so a worker killed mid re-embed resumes where it was. The walk restarts
too after a failover or when the partition comes back from another master (an HSCAN cursor
belongs to one node's table).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cluster import keys
from cluster.errors import ShardqaError
from gears.counters import Counters
from gears.embedder import EmbedStage, as_state, settled, vector_state
from gears.follower import Shard
from gears.settings import WorkerSettings

log = logging.getLogger("shardqa.worker")


@dataclass
class Walk:
    """Where a partition's re-embed is in its walk over the partition's passages."""

    node: str  # the master whose hash the cursor belongs to
    encoder: str
    cursor: int = 0
    started: bool = False  # the first HSCAN was sent (a cursor of 0 then means "done")
    pending: list[str] = field(default_factory=list)  # scanned, not yet embedded
    embedded: int = 0  # passages this walk put into the set

    @property
    def over(self) -> bool:
        return self.started and self.cursor == 0 and not self.pending


class Reembedder:
    """Re-embeds the owned partitions whose vectors are not the current encoder's."""

    def __init__(self, shard: Shard, stage: EmbedStage, settings: WorkerSettings,
                 counters: Counters):
        self.shard, self.stage, self.settings, self.counters = shard, stage, settings, counters
        self._walks: dict[str, Walk] = {}

    def serve(self) -> int:
        """One step: embed a batch of the first unsettled partition (or swap its set in);
        returns the passages embedded or made current (0: nothing to do)."""
        try:
            encoder = self.stage.ready(quiet=True) if self.shard.owned else None
        except ShardqaError as exc:  # a corrupt copy: 'shardqa model sync' repairs it
            self.stage.say_once(f"the passage encoder does not load ({exc}); partitions are "
                                "not re-embedded until it does")
            return 0
        if encoder is None:
            return 0
        owned = self.shard.owned
        pipe = self.shard.node.pipeline(transaction=False)
        for p in owned:
            pipe.hmget(keys.vector_meta(p.tag), [keys.VECTOR_ENCODER, keys.VECTOR_NEXT])
        states = [as_state(reply) for reply in pipe.execute()]
        todo = {p.tag: s for p, s in zip(owned, states, strict=True) if not settled(s, encoder)}
        for tag in set(self._walks) - set(todo):
            del self._walks[tag]  # settled, or no longer ours
        if not todo:
            return 0
        tag, state = next(iter(todo.items()))
        return self._step(tag, state, encoder)

    def _step(self, tag: str, state: tuple[str | None, str | None], encoder: str) -> int:
        walk = self._walks.get(tag)
        if walk is None and not self.shard.node.hlen(keys.index_lengths(tag)):
            return self._settle_empty(tag, encoder)
        if self.stage.begin(tag, state) or walk is None or walk.node != self.shard.serving \
                or walk.encoder != encoder:
            walk = self._walks[tag] = Walk(self.shard.serving, encoder)
        if not walk.pending and not walk.over:
            walk.cursor, found = self.shard.node.hscan(
                keys.index_lengths(tag), walk.cursor, count=self.settings.reembed_batch)
            walk.started = True
            walk.pending = [pid.decode() if isinstance(pid, bytes) else pid for pid in found]
        if walk.over:
            return self._swap(tag, encoder, walk)
        batch = walk.pending[:self.settings.reembed_batch]
        embedded = self.stage.embed(tag, keys.vectors_next(tag), self._passages(tag, batch),
                                    members_only=True)
        del walk.pending[:len(batch)]
        walk.embedded += embedded
        self.counters.reembedded += embedded
        return max(1, embedded)  # work was done even if every passage was in already

    def _settle_empty(self, tag: str, encoder: str) -> int:
        """A partition without passages: its (empty) vectors are the encoder's at once."""
        tx = self.shard.node.pipeline(transaction=True)
        tx.delete(keys.vectors(tag), keys.vectors_next(tag))
        tx.hset(keys.vector_meta(tag), keys.VECTOR_ENCODER, encoder)
        tx.hdel(keys.vector_meta(tag), keys.VECTOR_NEXT)
        tx.execute()
        return 1

    def _passages(self, tag: str, pids: list[str]) -> dict[str, tuple[str, str]]:
        """pid -> (title, text) of the passages that still exist."""
        pipe = self.shard.node.pipeline(transaction=False)
        for pid in pids:
            pipe.hmget(keys.passage(tag, pid), ("title", "text"))
        return {pid: ((title or b"").decode("utf-8"), text.decode("utf-8"))
                for pid, (title, text) in zip(pids, pipe.execute(), strict=True)
                if text is not None}

    def _swap(self, tag: str, encoder: str, walk: Walk) -> int:
        """The built set becomes the partition's, with its encoder, in one transaction,
        once it holds a vector for every indexed passage (else the walk starts again: the
        set was emptied under it by a build restarted meanwhile)."""
        node = self.shard.node
        if vector_state(node, tag)[1] != encoder:
            self._walks.pop(tag, None)  # the build was restarted meanwhile
            return 1
        count = int(node.execute_command("VCARD", keys.vectors_next(tag)) or 0)
        indexed = int(node.hlen(keys.index_lengths(tag)))
        if count < indexed:
            if walk.embedded:  # another walk finds what this one missed
                self._walks[tag] = Walk(walk.node, encoder)
                return 1
            log.warning("partition {%s}: %d indexed passages have no text to embed; "
                        "swapping the new vector set in without them", tag, indexed - count)
        tx = node.pipeline(transaction=True)
        if count:
            tx.rename(keys.vectors_next(tag), keys.vectors(tag))
        else:
            tx.delete(keys.vectors(tag))  # no passages: no vectors
        tx.hset(keys.vector_meta(tag), keys.VECTOR_ENCODER, encoder)
        tx.hdel(keys.vector_meta(tag), keys.VECTOR_NEXT)
        tx.execute()
        del self._walks[tag]
        self.shard.client.incr(keys.generation())  # answers ranked with the old set are stale
        log.info("partition {%s}: %d vectors made by encoder %s are now current", tag, count,
                 encoder)
        return max(1, count)
