"""Passages' token windows, stored beside each passage under the reader's token signature.

A passage is tokenized with the reader's tokenizer once, when it lands on its shard (an
ingest stage), and stored packed in its hash with ``tok_sig``: the tokenizer's digest, the
window size and the stride of the loaded reader, and the text's digest. At question time
the stored windows are used if the signature still matches; a passage tokenized for
another reader (or not yet) is tokenized then and stored again.
"""

from __future__ import annotations

import zlib

from cluster import keys
from cluster.partitions import Partition
from gears.follower import Shard
from gears.model_slot import ModelSlot

PASSAGE_FIELDS = ("text", "title", "tok_ids", "tok_offs", "tok_wins", "tok_sig")


class TokenWindows:
    """Reads and writes the packed tokenization of the shard's passages."""

    def __init__(self, shard: Shard, slot: ModelSlot):
        self.shard, self.slot = shard, slot

    def fetch(self, pids: list[str]) -> dict:
        """pid -> (text, PassageTokens), tokenizing (and storing) any that are stale.
        Passages that no longer exist are left out."""
        from models.tokenization import PassageTokens

        pipe = self.shard.node.pipeline(transaction=False)
        for pid in pids:
            pipe.hmget(keys.passage(self.shard.pmap.for_passage(pid).tag, pid), PASSAGE_FIELDS)
        found: dict = {}
        stale: list[tuple[str, str]] = []
        for pid, values in zip(pids, pipe.execute(), strict=True):
            text_raw, _title, ids, offs, wins, sig = values
            if text_raw is None:
                continue
            text = text_raw.decode("utf-8")
            tokens = None
            if sig is not None and sig.decode() == self._signature(text):
                tokens = PassageTokens.unpack(
                    {"tok_ids": ids, "tok_offs": offs, "tok_wins": wins})
            if tokens is None:
                stale.append((pid, text))
            else:
                found[pid] = (text, tokens)
        for (pid, text), tokens in zip(stale, self.tokenize(stale), strict=True):
            found[pid] = (text, tokens)
        return found

    def tokenize(self, texts: list[tuple[str, str]]) -> list:
        """Tokenize (pid, text) pairs with the loaded reader's tokenizer and store them."""
        from models.tokenization import tokenize_passages

        if not texts:
            return []
        slot = self.slot
        fresh = tokenize_passages(slot.loaded.tokenizer, [t for _, t in texts],
                                  slot.window_tokens, slot.stride)
        pipe = self.shard.node.pipeline(transaction=False)
        for (pid, text), tokens in zip(texts, fresh, strict=True):
            tag = self.shard.pmap.for_passage(pid).tag
            pipe.hset(keys.passage(tag, pid),
                      mapping={**tokens.pack(), "tok_sig": self._signature(text)})
            pipe.hset(keys.index_windows(tag), pid, len(tokens.windows))
        pipe.execute()
        return fresh

    def _signature(self, text: str) -> str:
        return f"{self.slot.signature}:{zlib.crc32(text.encode('utf-8')):08x}"


class TokenizeStage:
    """Ingest stage: tokenize put passages into windows (when a reader is loaded; otherwise
    they are tokenized at their first question)."""

    name = "windows"

    def __init__(self, windows: TokenWindows):
        self.windows = windows

    def apply(self, partition: Partition, puts: dict[str, tuple[str, str]],
              deletes: list[str]) -> int:
        if puts and self.windows.slot.loaded is not None:
            self.windows.tokenize([(pid, text) for pid, (_title, text) in puts.items()])
        return 0
