"""The passage encoder runtime: texts in, unit-length float32 embeddings out.

The TorchScript module (models/export_encoder.py) holds the whole sentence encoder: the
transformer, the pooling its sentence-transformers config names and the L2 norm, called as
module(input_ids, attention_mask, token_type_ids) -> [batch, dim]. Texts are cut to the
encoder's max_seq_len and run in padded batches grouped by length, so a batch pads to its
own longest text and short passages don't pay for long ones.
"""

from __future__ import annotations

import numpy as np
import tokenizers
import torch

from models.reader import ReaderInputError, special_ids
from models.tokenization import plain


def passage_input(title: str, text: str) -> str:
    """What is embedded for a passage: its title, then its text (the same for the ingest
    stage and the bench that chose the fusion, so their vectors agree)."""
    return f"{title}\n\n{text}" if title else text


class Encoder:
    """Runs a TorchScript sentence encoder over texts in length-grouped padded batches."""

    def __init__(self, module: torch.jit.ScriptModule, tokenizer: tokenizers.Tokenizer, *,
                 dim: int, max_seq_len: int = 256, max_batch: int = 32,
                 threads: int | None = None):
        if max_seq_len < 4:
            raise ReaderInputError(f"max_seq_len must be at least 4, got {max_seq_len}")
        if max_batch < 1 or dim < 1:
            raise ReaderInputError("max_batch and dim must be >= 1")
        self.module = module
        self.tokenizer = plain(tokenizers.Tokenizer.from_str(tokenizer.to_str()))
        self.tokenizer.enable_truncation(max_length=max_seq_len)  # specials stay inside
        self.dim = dim
        self.max_seq_len = max_seq_len
        self.max_batch = max_batch
        self.pad_id = special_ids(self.tokenizer)[2]
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """[CLS] text [SEP] ids of each text, cut to max_seq_len."""
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), dim] embeddings, in the order of ``texts``."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        ids = self.token_ids(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for k in range(0, len(order), self.max_batch):
            rows = order[k:k + self.max_batch]
            out[rows] = self._forward([ids[i] for i in rows])
        return out

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        width = max(len(row) for row in batch)
        ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for r, row in enumerate(batch):
            ids[r, :len(row)] = row
            mask[r, :len(row)] = 1
        with torch.inference_mode():
            vectors = self.module(torch.from_numpy(ids), torch.from_numpy(mask),
                                  torch.zeros_like(torch.from_numpy(ids)))
        return vectors.float().numpy()

    def warm_up(self) -> None:
        """Two small forwards (TorchScript optimizes on its second call)."""
        for _ in range(2):
            self.embed(["warm up", "warm up the encoder"])
