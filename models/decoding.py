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
    found = span_band(start_logits, end_logits, context_start, context_end, max_answer_tokens)
    if found is None:
        return None
    lo, band = found
    # row-major argmax: earliest start, then earliest end; all -inf gives (lo, lo), a valid span
    width = band.shape[1]
    flat = int(np.argmax(band))
    i, d = divmod(flat, width)
    j = i + d
    score = (float(np.asarray(start_logits).reshape(-1)[lo + i])
             + float(np.asarray(end_logits).reshape(-1)[lo + j]))
    return lo + i, lo + j, score


def span_band(start_logits: np.ndarray, end_logits: np.ndarray, context_start: int,
              context_end: int, max_answer_tokens: int = 30) -> tuple[int, np.ndarray] | None:
    """(lo, band): band[i, d] = score of the span (lo + i, lo + i + d), -inf where that span
    is invalid (past the context, NaN). None if the context is empty."""
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
    return lo, np.where((idx < n) & ~np.isnan(band), band, -np.inf)


def distinct_spans(band: np.ndarray, count: int) -> list[tuple[int, int, float]]:
    """Up to ``count`` (i, j, score) of a ``span_band`` (offsets relative to its ``lo``), best
    first, none overlapping a better one; only finite scores.

    Why not simply the ``count`` highest: those are near copies of the best ("Gustave Eiffel",
    "Eiffel", "of Gustave Eiffel"); the next *distinct* answer is what a person wants
    to see ("Italian" first, "Leonardo da Vinci" later in the sentence). Greedy, as
    non-maximum suppression: take the best, rule out every span sharing a token with it,
    repeat. The first is ``best_span``'s (same ties) whenever it is finite.
    """
    band = np.array(band, dtype=np.float64)  # a copy: it is overwritten as spans are taken
    rows, width = band.shape
    offsets = np.arange(width)[None, :]
    out: list[tuple[int, int, float]] = []
    while len(out) < count and band.size:
        i, d = divmod(int(np.argmax(band)), width)
        score = float(band[i, d])
        if not np.isfinite(score):
            break
        j = i + d
        out.append((i, j, score))
        # the spans (s, s + e) sharing a token with (i, j): s <= j and s + e >= i
        first = max(0, i - width + 1)
        starts = np.arange(first, min(rows, j + 1))[:, None]
        band[first:j + 1][starts + offsets >= i] = -np.inf
    return out


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two character ranges [start, end) share a character."""
    return a[0] < b[1] and b[0] < a[1]


def log_partition(scores: np.ndarray, temperature: float) -> float:
    """log sum exp(score / temperature) over the finite scores (-inf if none): the softmax
    denominator over candidate spans, which passages add up (``np.logaddexp``)."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1) / float(temperature)
    flat = flat[np.isfinite(flat)]
    if not flat.size:
        return float("-inf")
    top = float(flat.max())
    return top + float(np.log(np.exp(flat - top).sum()))


def span_chars(offsets: np.ndarray, first_token: int, last_token: int) -> tuple[int, int]:
    """Character range [start, end) covered by passage tokens first_token..last_token
    (inclusive), from the tokenizer's per-token (start, end) offsets."""
    return int(offsets[first_token, 0]), int(offsets[last_token, 1])


def says_no_answer(span_score: float, null_score: float, threshold: float) -> bool:
    """SQuAD 2.0's rule (the official script's ``na_prob_thresh`` on score differences):
    "no answer" when the null score (start + end logit at [CLS]) beats the best span's score
    by more than ``threshold``."""
    return null_score - span_score > threshold


def answer_confidence(score: float, temperature: float, log_zs: list[float | None]
                      ) -> float | None:
    """The answer span's probability in a softmax over the candidate spans of every passage
    read (each passage brings its ``log_partition``); None if a passage did not say."""
    if not log_zs or any(z is None for z in log_zs):
        return None
    total = float(np.logaddexp.reduce(np.asarray(log_zs, dtype=np.float64)))
    return float(np.exp(score / temperature - total))
