"""Ingest stage: put passages embedded into their partition's vector set (Redis 8).

The encoder is the one pushed to the shard's master (models.store, kind ``encoder``). Each
put passage is embedded from ``title + text`` (models.encoder.passage_input, the input the
fusion was chosen with), cut at ``embed_max_tokens`` (128), in small batches grouped by
length (``embed_batch``, 8), and ``VADD``ed (FP32 blob, Q8 quantization) under its passage
id into ``keys.vectors(tag)``, which lives under the partition's hash tag and so moves and
fails over with it. ``emb_sig`` in the passage hash (encoder version, token cut and text
digest, like ``tok_sig``) is written after the vector, so an unchanged passage is never
embedded twice and a worker killed between the two only embeds that passage again. Deleted
passages are ``VREM``ed. The encoder is loaded (and warmed up) as soon as it is pushed, not
by the first ingest batch that needs it.

Without vector sets (Redis 7, Valkey) or without a pushed encoder the stage does nothing and
says so once: the corpus is then ranked by BM25 alone.
"""

from __future__ import annotations

import logging
import zlib

import redis

from cluster import capabilities, keys
from cluster.partitions import Partition
from cluster.routing import CLUSTER_TROUBLE
from gears.dense import vector_blob

log = logging.getLogger("shardqa.worker")

#: VADD quantization: int8 per vector (Redis' default), 4x smaller than FP32; bench/
#: retrieval_fusion.py: recall of VSIM Q8 equals exact fp32 cosine at 10k passages.
QUANTIZATION = "Q8"
SIG_FIELD = "emb_sig"


class EmbedStage:
    """Ingest stage ``dense``: VADD put passages, VREM deleted ones, skip unchanged ones."""

    name = "dense"

    def __init__(self, shard, threads: int | None = None, batch: int = 8,
                 max_tokens: int | None = 128):
        self.shard, self.threads = shard, threads
        self.batch, self.max_tokens = batch, max_tokens
        self.encoder = None  # models.encoder.Encoder
        self.version: str | None = None  # "version:variant:max tokens" of the loaded encoder
        self._loaded: str | None = None  # "version:variant" of the stored encoder loaded
        self._vector_sets: dict[str, bool] = {}  # serving node -> has vector sets
        self._said: set[str] = set()

    def apply(self, partition: Partition, puts: dict[str, tuple[str, str]],
              deletes: list[str]) -> int:
        """Returns how many vectors were added, replaced or removed."""
        if not (puts or deletes) or not self._ready():
            return 0
        key = keys.vectors(partition.tag)
        removed = self._remove(key, deletes) if deletes else 0
        return removed + (self._add(partition.tag, key, puts) if puts else 0)

    # --- the encoder and the server ------------------------------------------------------------

    def prepare(self) -> None:
        """Load a newly pushed encoder now (the worker's duties call this), so the first
        ingest batch after a push does not wait for it; a failure here is only logged (the
        batch that needs the encoder meets it again)."""
        try:
            self._ready(quiet=True)
        except CLUSTER_TROUBLE:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken copy must not stop the loop
            self._once(f"the passage encoder does not load yet: {exc}")

    def _ready(self, quiet: bool = False) -> bool:
        """Whether passages can be embedded now (loading a new encoder); ``quiet``: do not
        say why not (only a batch with passages to embed says it, once)."""
        node = self.shard.serving
        if node not in self._vector_sets:
            self._vector_sets[node] = capabilities.node_has_vector_sets(self.shard.node)
        if not self._vector_sets[node]:
            if not quiet:
                self._once(f"master {node} has no vector sets (Redis < 8 or Valkey): passages "
                           "are not embedded; questions are ranked by BM25 alone")
            return False
        return self._load_encoder(node, quiet)

    def _load_encoder(self, node: str, quiet: bool = False) -> bool:
        from models import store

        pointer = store.current_meta(self.shard.client, node, kind="encoder")
        if pointer is None:
            if not quiet:
                self._once("no passage encoder pushed: passages are not embedded (BM25 only); "
                           "push one with 'shardqa model push ENCODER_ARTIFACT'")
            return False
        wanted = f"{pointer['version']}:{pointer['variant']}"
        if wanted != self._loaded:
            loaded = store.load(self.shard.client, node, kind="encoder")
            own = int(loaded.meta["max_seq_len"])
            cut = min(own, self.max_tokens) if self.max_tokens else own
            self.encoder = loaded.encoder(threads=self.threads, max_batch=self.batch,
                                          max_seq_len=cut)
            self.encoder.warm_up()  # TorchScript optimizes on its second call
            self._loaded, self.version = wanted, f"{wanted}:{cut}"
            log.info("passage encoder %s loaded (%s, passages cut at %d tokens)",
                     loaded.meta.get("name"), wanted, cut)
        return True

    def _once(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            log.warning("%s", message)

    # --- writing ---------------------------------------------------------------------------------

    def _remove(self, key: str, pids: list[str]) -> int:
        pipe = self.shard.node.pipeline(transaction=False)
        for pid in pids:
            pipe.execute_command("VREM", key, pid)
        return sum(int(bool(r)) for r in pipe.execute(raise_on_error=False)
                   if not isinstance(r, redis.ResponseError))

    def signature(self, title: str, text: str) -> str:
        """The encoder's version, its token cut and the embedded input's digest."""
        from models.encoder import passage_input

        digest = zlib.crc32(passage_input(title, text).encode("utf-8"))
        return f"{self.version}:{digest:08x}"

    def _add(self, tag: str, key: str, puts: dict[str, tuple[str, str]]) -> int:
        from models.encoder import passage_input

        pids = list(puts)
        pipe = self.shard.node.pipeline(transaction=False)
        for pid in pids:
            pipe.hget(keys.passage(tag, pid), SIG_FIELD)
        sigs = {pid: self.signature(*puts[pid]) for pid in pids}
        todo = [pid for pid, stored in zip(pids, pipe.execute(), strict=True)
                if stored is None or stored.decode() != sigs[pid]]
        if not todo:
            return 0
        vectors = self.encoder.embed([passage_input(*puts[pid]) for pid in todo])
        pipe = self.shard.node.pipeline(transaction=False)
        for pid, vector in zip(todo, vectors, strict=True):
            pipe.execute_command("VADD", key, "FP32", vector_blob(vector), pid, QUANTIZATION)
            pipe.hset(keys.passage(tag, pid), SIG_FIELD, sigs[pid])  # after its vector
        pipe.execute()
        return len(todo)
