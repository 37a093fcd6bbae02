"""Passage tokenization with the reader's fast tokenizer: ids, character offsets, windows.

Passages are tokenized once, when they land on their shard, and stored packed in the
passage hash; at question time the reader only tokenizes the question. Windows are token
ranges into the passage, so a long passage is read in overlapping pieces that each fit the
model next to the question.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain

import numpy as np
import tokenizers

_LE_INT32 = np.dtype("<i4")
#: token overlap of consecutive windows when the reader artifact's meta names none; part of
#: the artifact's token signature (a passage tokenized with another stride is stale)
DEFAULT_STRIDE = 128
_FIELDS = ("tok_ids", "tok_offs", "tok_wins")


@dataclass
class PassageTokens:
    ids: np.ndarray      # int32 [n] token ids of the whole passage, no special tokens
    offsets: np.ndarray  # int32 [n, 2] character (start, end) of each token in the passage text
    windows: np.ndarray  # int32 [w, 2] token index ranges [start, end) of each window

    def pack(self) -> dict[str, bytes]:
        """Little-endian int32 bytes for the passage hash (fields tok_ids, tok_offs, tok_wins)."""
        return {
            "tok_ids": np.ascontiguousarray(self.ids, dtype=_LE_INT32).tobytes(),
            "tok_offs": np.ascontiguousarray(self.offsets, dtype=_LE_INT32).tobytes(),
            "tok_wins": np.ascontiguousarray(self.windows, dtype=_LE_INT32).tobytes(),
        }

    @classmethod
    def unpack(cls, fields: Mapping) -> PassageTokens | None:
        """From a passage hash (keys str or bytes); None if the passage is not tokenized yet."""
        raw = {}
        for name in _FIELDS:
            value = fields.get(name)
            if value is None:
                value = fields.get(name.encode())
            if value is None:
                return None
            if isinstance(value, str):
                value = value.encode("latin-1")
            raw[name] = bytes(value)
        ids = np.frombuffer(raw["tok_ids"], dtype=_LE_INT32).astype(np.int32)
        offsets = np.frombuffer(raw["tok_offs"], dtype=_LE_INT32).astype(np.int32).reshape(-1, 2)
        windows = np.frombuffer(raw["tok_wins"], dtype=_LE_INT32).astype(np.int32).reshape(-1, 2)
        if offsets.shape[0] != ids.shape[0]:
            raise ValueError(
                f"packed passage tokens disagree: {ids.shape[0]} ids, {offsets.shape[0]} offsets"
            )
        if windows.size and (windows.min() < 0 or windows.max() > ids.shape[0]):
            raise ValueError("packed passage windows point outside the passage tokens")
        return cls(ids=ids, offsets=offsets, windows=windows)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def window_token_budget(max_seq_len: int, max_question_tokens: int,
                        special_tokens: int = 3) -> int:
    """Passage tokens per window: what is left after the question and the layout's special
    tokens (3 for [CLS] q [SEP] w [SEP], 4 for RoBERTa's <s> q </s></s> w </s>)."""
    budget = max_seq_len - max_question_tokens - special_tokens
    if budget < 1:
        raise ValueError(
            f"max_seq_len {max_seq_len} leaves no room for a passage after "
            f"{max_question_tokens} question tokens"
        )
    return budget


def window_shape(meta: dict, special_tokens: int = 3) -> tuple[int, int]:
    """(passage tokens per window, stride) for a reader artifact's meta and its input
    layout's special tokens."""
    window = window_token_budget(int(meta.get("max_seq_len", 384)),
                                 int(meta.get("max_question_tokens", 64)), special_tokens)
    return window, int(meta.get("stride", DEFAULT_STRIDE))


def plain(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """Switch off truncation and padding baked into a tokenizer.json (MiniLM's pads to 128):
    windows and batches are our job, and a silent cut at 128 tokens would lose text."""
    if tokenizer.truncation is not None:
        tokenizer.no_truncation()
    if tokenizer.padding is not None:
        tokenizer.no_padding()
    return tokenizer


def load_tokenizer(tokenizer_json: str | bytes) -> tokenizers.Tokenizer:
    """From the JSON text (what Redis stores), with truncation and padding off."""
    if isinstance(tokenizer_json, bytes):
        tokenizer_json = tokenizer_json.decode("utf-8")
    return plain(tokenizers.Tokenizer.from_str(tokenizer_json))


def windows_for(n_tokens: int, window_tokens: int, stride: int) -> np.ndarray:
    """[start, end) windows of at most window_tokens; consecutive windows share `stride` tokens."""
    if window_tokens < 1:
        raise ValueError(f"window_tokens must be >= 1, got {window_tokens}")
    if not 0 <= stride < window_tokens:
        raise ValueError(f"stride must be in [0, window_tokens), got {stride} / {window_tokens}")
    if n_tokens <= 0:
        return np.zeros((0, 2), dtype=np.int32)
    step = window_tokens - stride
    out = []
    start = 0
    while True:
        end = min(start + window_tokens, n_tokens)
        out.append((start, end))
        if end >= n_tokens:
            break
        start += step
    return np.asarray(out, dtype=np.int32)


def tokenize_passages(tokenizer: tokenizers.Tokenizer, texts: list[str], window_tokens: int,
                      stride: int) -> list[PassageTokens]:
    """Tokenize passages in one batch call (no special tokens) and cut them into windows.

    Truncation/padding configured on the tokenizer are switched off first (see ``plain``).
    """
    windows_for(0, window_tokens, stride)  # validate the window shape even for no texts
    plain(tokenizer)
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    result = []
    for text, enc in zip(texts, encodings, strict=True):
        ids = np.asarray(enc.ids, dtype=np.int32)
        pairs = enc.offsets
        offsets = np.fromiter(chain.from_iterable(pairs), dtype=np.int32,
                              count=2 * len(pairs)).reshape(-1, 2)  # 1.7x asarray's speed
        trim_leading_space(text, offsets)
        result.append(PassageTokens(ids=ids, offsets=offsets,
                                    windows=windows_for(len(ids), window_tokens, stride)))
    return result


def trim_leading_space(text: str, offsets: np.ndarray) -> None:
    """Move each token's start past the whitespace it carries, in place.

    Byte-level BPE ("Ġword") and SentencePiece ("▁word") tokens count the space before the
    word as theirs; an answer starting at such a token would start with a space.
    """
    while len(offsets):  # ends: every pass moves starts towards their ends
        open_ = np.nonzero(offsets[:, 0] < offsets[:, 1])[0]
        move = open_[[text[i].isspace() for i in offsets[open_, 0].tolist()]] \
            if open_.size else open_
        if not move.size:
            return
        offsets[move, 0] += 1
