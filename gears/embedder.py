"""Ingest stage: put passages embedded into their partition's vector set (Redis 8).

The encoder is the one pushed to the shard's master (models.store, kind ``encoder``). Each
put passage is embedded from ``title + text`` (models.encoder.passage_input, the input the
fusion was chosen with), cut at ``embed_max_tokens`` (128), in small batches grouped by
length (``embed_batch``, 8), and ``VADD``ed (FP32 blob, Q8 quantization) under its passage
id into its partition's vector set, which lives under the partition's hash tag and so moves
and fails over with it. ``emb_sig`` in the passage hash (encoder id, token cut and text
digest, like ``tok_sig``) is written after the vector, so an unchanged passage is never
embedded twice, a worker killed between the two only embeds that passage again, and a new
cut re-embeds a passage when it is ingested again. Deleted passages are ``VREM``ed.

Vectors from two encoders never share a set. ``keys.vector_meta`` names the encoder that
made every vector in ``keys.vectors(tag)``; while the shard's encoder is another one, a
re-embed (gears/reembed.py) builds ``keys.vectors_next(tag)`` with it and renames it over
the old set when every passage is in it. Passages put meanwhile go into the set being built
(the old set keeps the old vector of a changed passage until the swap); deleted ones leave
both.

Without vector sets (Redis 7, Valkey) or without a pushed encoder the stage does nothing and
says so once: the corpus is then ranked by BM25 alone.
"""

from __future__ import annotations

import logging
import zlib

import redis

from cluster import capabilities, keys
from cluster.partitions import Partition
from gears.dense import vector_blob

log = logging.getLogger("shardqa.worker")

#: VADD quantization: int8 per vector (Redis' default), 4x smaller than FP32; bench/
#: retrieval_fusion.py: recall of VSIM Q8 equals exact fp32 cosine at 10k passages.
QUANTIZATION = "Q8"
SIG_FIELD = "emb_sig"


def vector_state(conn, tag: str) -> tuple[str | None, str | None]:
    """(encoder id of the partition's vectors, encoder id a re-embed is building with)."""
    return as_state(conn.hmget(keys.vector_meta(tag), [keys.VECTOR_ENCODER, keys.VECTOR_NEXT]))


def as_state(reply) -> tuple[str | None, str | None]:
    """A ``HMGET vector_meta encoder next`` reply as (encoder, next)."""
    live, building = reply
    return _text(live), _text(building)


def settled(state: tuple[str | None, str | None], encoder: str) -> bool:
    """Every vector of the partition is made by ``encoder`` and no re-embed is under way."""
    return state == (encoder, None)


class EmbedStage:
    """Ingest stage ``dense``: VADD put passages, VREM deleted ones, skip unchanged ones."""

    name = "dense"

    def __init__(self, shard, threads: int | None = None, batch: int = 8,
                 max_tokens: int | None = 128):
        self.shard, self.threads = shard, threads
        self.batch, self.max_tokens = batch, max_tokens
        self.encoder = None  # models.encoder.Encoder
        self.version: str | None = None  # models.identity.model_id of the loaded encoder
        self.cut: int | None = None  # tokens a passage is cut at (the loaded encoder's)
        self._vector_sets: dict[str, bool] = {}  # serving node -> has vector sets
        self._said: set[str] = set()

    def apply(self, partition: Partition, puts: dict[str, tuple[str, str]],
              deletes: list[str]) -> int:
        """Returns how many vectors were added, replaced or removed."""
        if not (puts or deletes) or self.ready() is None:
            return 0
        tag = partition.tag
        state = vector_state(self.shard.node, tag)
        removed = self._remove(tag, deletes, building=state[1] is not None) if deletes else 0
        if not puts:
            return removed
        if settled(state, self.version):
            return removed + self.embed(tag, keys.vectors(tag), puts)
        if state == (None, None) and self._adopt(tag, len(puts)):
            return removed + self.embed(tag, keys.vectors(tag), puts, members_only=True)
        self.begin(tag, state)  # a re-embed is due: new vectors go into the set it builds
        return removed + self.embed(tag, keys.vectors_next(tag), puts, members_only=True)

    def _adopt(self, tag: str, puts: int) -> bool:
        """A partition whose only passages are this batch's gets its first vector set at
        once (nothing to re-embed: no build, no swap)."""
        if self.shard.node.hlen(keys.index_lengths(tag)) != puts:
            return False  # older passages: the re-embed embeds them all
        tx = self.shard.node.pipeline(transaction=True)
        tx.delete(keys.vectors(tag), keys.vectors_next(tag))
        tx.hset(keys.vector_meta(tag), keys.VECTOR_ENCODER, self.version)
        tx.execute()
        return True

    def begin(self, tag: str, state: tuple[str | None, str | None]) -> bool:
        """Start building the partition's next set with the loaded encoder, unless that is
        under way already; returns whether it started (a build for another encoder, or
        one left over, is thrown away)."""
        if state[1] == self.version:
            return False
        tx = self.shard.node.pipeline(transaction=True)
        tx.delete(keys.vectors_next(tag))
        tx.hset(keys.vector_meta(tag), keys.VECTOR_NEXT, self.version)
        tx.execute()
        log.info("partition {%s}: embedding its passages with encoder %s into a new vector "
                 "set (until it is complete, questions use %s)", tag, self.version,
                 f"the vectors of {state[0]}" if state[0] else "BM25 alone")
        return True

    # --- the encoder and the server ------------------------------------------------------------

    def ready(self, quiet: bool = False) -> str | None:
        """The loaded encoder's id, or None (no vector sets here, or no encoder pushed: said
        once unless ``quiet``)."""
        node = self.shard.serving
        if node not in self._vector_sets:
            self._vector_sets[node] = capabilities.node_has_vector_sets(self.shard.node)
        if not self._vector_sets[node]:
            if not quiet:
                self.say_once(f"master {node} has no vector sets (Redis < 8 or Valkey): "
                              "passages are not embedded; questions are ranked by BM25 alone")
            return None
        return self.version if self._load_encoder(node, quiet) else None

    def _load_encoder(self, node: str, quiet: bool) -> bool:
        from models import store
        from models.identity import model_id

        pointer = store.current_meta(self.shard.client, node, kind="encoder")
        if pointer is None:
            if not quiet:
                self.say_once("no passage encoder pushed: passages are not embedded (BM25 "
                              "only); push one with 'shardqa model push ENCODER_ARTIFACT'")
            return False
        wanted = model_id(pointer)
        if wanted != self.version:
            loaded = store.load(self.shard.client, node, kind="encoder")
            own = int(loaded.meta["max_seq_len"])
            cut = min(own, self.max_tokens) if self.max_tokens else own
            self.encoder = loaded.encoder(threads=self.threads, max_batch=self.batch,
                                          max_seq_len=cut)
            self.encoder.warm_up()  # TorchScript optimizes on its second call
            self.version, self.cut = wanted, cut
            log.info("passage encoder %s loaded (passages cut at %d tokens)", wanted, cut)
        return True

    def say_once(self, message: str) -> None:
        """Log ``message`` as a warning the first time only."""
        if message not in self._said:
            self._said.add(message)
            log.warning("%s", message)

    # --- writing ---------------------------------------------------------------------------------

    def _remove(self, tag: str, pids: list[str], building: bool) -> int:
        pipe = self.shard.node.pipeline(transaction=False)
        for key in (keys.vectors(tag), *([keys.vectors_next(tag)] if building else [])):
            for pid in pids:
                pipe.execute_command("VREM", key, pid)
        return sum(int(bool(r)) for r in pipe.execute(raise_on_error=False)
                   if not isinstance(r, redis.ResponseError))

    def signature(self, title: str, text: str) -> str:
        """The encoder's id, the token cut and the embedded input's digest."""
        from models.encoder import passage_input

        digest = zlib.crc32(passage_input(title, text).encode("utf-8"))
        return f"{self.version}:{self.cut}:{digest:08x}"

    def embed(self, tag: str, key: str, puts: dict[str, tuple[str, str]], *,
              members_only: bool = False) -> int:
        """VADD into ``key`` the passages of ``puts`` whose vector there is not the loaded
        encoder's for their text; returns how many. ``members_only``: also embed a passage
        whose signature matches but which ``key`` lacks (the set a re-embed builds starts
        empty, while signatures may come from an earlier build)."""
        todo = self._stale(tag, key, puts, members_only)
        if not todo:
            return 0
        from models.encoder import passage_input

        vectors = self.encoder.embed([passage_input(*puts[pid]) for pid in todo])
        pipe = self.shard.node.pipeline(transaction=False)
        for (pid, sig), vector in zip(todo.items(), vectors, strict=True):
            pipe.execute_command("VADD", key, "FP32", vector_blob(vector), pid, QUANTIZATION)
            pipe.hset(keys.passage(tag, pid), SIG_FIELD, sig)  # after its vector
        pipe.execute()
        return len(todo)

    def _stale(self, tag: str, key: str, puts: dict[str, tuple[str, str]],
               members_only: bool) -> dict[str, str]:
        """pid -> new signature of the passages to embed."""
        pids = list(puts)
        pipe = self.shard.node.pipeline(transaction=False)
        for pid in pids:
            pipe.hget(keys.passage(tag, pid), SIG_FIELD)
            if members_only:
                pipe.execute_command("VISMEMBER", key, pid)
        replies = iter(pipe.execute())
        todo = {}
        for pid in pids:
            stored = _text(next(replies))
            member = bool(next(replies)) if members_only else True
            sig = self.signature(*puts[pid])
            if stored != sig or not member:
                todo[pid] = sig
        return todo


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
