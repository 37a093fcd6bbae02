"""Answer-span decoding from start/end logits (transformers 5 has no QA pipeline to do it).

numpy only, so the training/metrics code and the worker share exactly one definition of
"best span" without importing torch.
"""

from __future__ import annotations

import numpy as np


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, context_start: int,
              context_end: int, max_answer_tokens: int = 30) -> tuple[int, int, float] | None:
    """Best (i, j, score) with context_start <= i <= j < context_end,
    j - i + 1 <= max_answer_tokens, score = start_logits[i] + end_logits[j] (float).
    Token indices are positions in the model input.
    Ties: the earliest start, then the earliest end. None if the context is empty.

    The search is over a band (start, length) rather than the full start x end square, so the
    cost is O(n * max_answer_tokens). NaN logits never win (they count as -inf).
    """
    if max_answer_tokens < 1:
        raise ValueError(f"max_answer_tokens must be >= 1, got {max_answer_tokens}")
    start = np.asarray(start_logits, dtype=np.float64).reshape(-1)
    end = np.asarray(end_logits, dtype=np.float64).reshape(-1)
    lo = max(int(context_start), 0)
    hi = min(int(context_end), start.shape[0], end.shape[0])
    if hi <= lo:
        return None
    s = np.where(np.isnan(start[lo:hi]), -np.inf, start[lo:hi])
    e = np.where(np.isnan(end[lo:hi]), -np.inf, end[lo:hi])
    n = hi - lo
    width = min(int(max_answer_tokens), n)
    # band[i, d] = s[i] + e[i + d]; positions past the context are -inf.
    e_padded = np.concatenate([e, np.full(width - 1, -np.inf)])
    idx = np.arange(n)[:, None] + np.arange(width)[None, :]
    band = s[:, None] + e_padded[idx]
    band = np.where((idx < n) & ~np.isnan(band), band, -np.inf)
    # row-major argmax: earliest start, then earliest end; all -inf gives (lo, lo), a valid span
    flat = int(np.argmax(band))
    i, d = divmod(flat, width)
    j = i + d
    score = float(start[lo + i]) + float(end[lo + j])
    return lo + i, lo + j, score


def span_chars(offsets: np.ndarray, first_token: int, last_token: int) -> tuple[int, int]:
    """Character range [start, end) covered by passage tokens first_token..last_token
    (inclusive), from the tokenizer's per-token (start, end) offsets."""
    return int(offsets[first_token, 0]), int(offsets[last_token, 1])


def says_no_answer(span_score: float, null_score: float, threshold: float) -> bool:
    """SQuAD 2.0's rule (the official script's ``na_prob_thresh`` on score differences):
    "no answer" when the null score (start + end logit at [CLS]) beats the best span's score
    by more than ``threshold``."""
    return null_score - span_score > threshold
