"""The reader runtime: (question, passage window) pairs in, best answer spans out.

Pairs are run in padded batches grouped by length, so a batch pads to its own longest pair
and short windows don't pay for long ones. Passages arrive pre-tokenized (``PassageTokens``),
so only the question is tokenized here, once per question.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import tokenizers
import torch

from cluster.errors import ShardqaError
from models.decoding import (
    best_span,
    distinct_spans,
    log_partition,
    overlaps,
    says_no_answer,
    span_band,
    span_chars,
)
from models.layout import PairLayout, pair_layout, special_ids
from models.tokenization import PassageTokens, plain

__all__ = ["Reader", "ReaderInputError", "Span", "best_of", "special_ids"]


class ReaderInputError(ShardqaError):
    """The reader was given something it cannot read (bad tokenizer, bad configuration)."""


@dataclass(frozen=True)
class Span:
    passage: int      # index into the passages list given for that question
    window: int       # window index inside that passage
    start: int        # character offsets into the passage text; text == passage_text[start:end]
    end: int
    text: str
    score: float      # start logit + end logit
    # the fields below are statistics of the passage's other spans: two reads of the same
    # span are equal even if batching moved them in the last bits
    #: the passage's no-answer score (start + end logit at [CLS]; the lowest over its windows)
    null_score: float | None = field(default=None, compare=False)
    #: the reader's null threshold says this passage holds no answer (the span is its best guess)
    null: bool = False
    #: log sum exp(score / temperature) over every candidate span of the passage's windows
    log_z: float | None = field(default=None, compare=False)
    temperature: float = 1.0
    #: the passage's highest candidate span scores (only when the reader keeps them: fitting)
    candidates: tuple[float, ...] = field(default=(), compare=False)
    #: the passage's next best spans after this one, best first, none overlapping a better
    #: one and each one the reader would answer with (``read_many(top=...)``)
    more: tuple[Span, ...] = field(default=(), compare=False)

    @property
    def confidence(self) -> float | None:
        """The span's probability among all candidate spans of its passage."""
        if self.log_z is None:
            return None
        return float(np.exp(self.score / self.temperature - self.log_z))


@dataclass
class _Pair:
    job: int
    passage: int
    window: int
    question: np.ndarray
    context: np.ndarray
    context_offset: int  # token index of the window's first token inside the passage
    specials: int = 3    # special tokens of the layout around question and window

    @property
    def length(self) -> int:
        return len(self.question) + len(self.context) + self.specials


class Reader:
    """Runs a TorchScript QA module called as module(input_ids, attention_mask, token_type_ids)
    returning (start_logits, end_logits)."""

    def __init__(self, module: torch.jit.ScriptModule, tokenizer: tokenizers.Tokenizer, *,
                 max_seq_len: int = 384, max_question_tokens: int = 64,
                 max_answer_tokens: int = 30, max_batch_pairs: int = 32,
                 threads: int | None = None, null_threshold: float | None = None,
                 temperature: float = 1.0, min_confidence: float | None = None,
                 keep_candidates: int = 0):
        if max_seq_len < 8:
            raise ReaderInputError(f"max_seq_len must be at least 8, got {max_seq_len}")
        if not 1 <= max_question_tokens <= max_seq_len - 4:
            raise ReaderInputError(
                f"max_question_tokens must be in [1, {max_seq_len - 4}], got {max_question_tokens}"
            )
        if max_answer_tokens < 1 or max_batch_pairs < 1:
            raise ReaderInputError("max_answer_tokens and max_batch_pairs must be >= 1")
        self.module = module
        self.tokenizer = plain(tokenizer)
        self.max_seq_len = max_seq_len
        self.max_question_tokens = max_question_tokens
        self.max_answer_tokens = max_answer_tokens
        self.max_batch_pairs = max_batch_pairs
        self.layout: PairLayout = pair_layout(self.tokenizer)
        #: None: the reader always answers (SQuAD 1.1); else a passage whose null score
        #: beats its best span by more than this says "no answer" (SQuAD 2.0)
        self.null_threshold = null_threshold
        if not temperature > 0:
            raise ReaderInputError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        #: None: off; else a passage whose best span's confidence is lower says "no answer"
        #: (how a SQuAD 1.1 reader abstains)
        self.min_confidence = min_confidence
        self.keep_candidates = int(keep_candidates)
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))

    def question_ids(self, question: str) -> np.ndarray:
        """Question token ids without special tokens, cut to max_question_tokens."""
        enc = self.tokenizer.encode(question, add_special_tokens=False)
        return np.asarray(enc.ids[: self.max_question_tokens], dtype=np.int64)

    # --- batching ----------------------------------------------------------------------

    def _pairs(self, jobs) -> list[_Pair]:
        pairs: list[_Pair] = []
        for j, (question, passages) in enumerate(jobs):
            if not passages:
                continue
            q = self.question_ids(question)
            room = self.max_seq_len - len(q) - self.layout.special_tokens
            for p, (_text, tokens) in enumerate(passages):
                if tokens is None:
                    continue
                for w, (lo, hi) in enumerate(np.asarray(tokens.windows).reshape(-1, 2)):
                    lo, hi = int(lo), int(hi)
                    hi = min(hi, lo + room)  # a window cut for a shorter question budget
                    if hi <= lo:
                        continue
                    pairs.append(_Pair(j, p, w, q, np.asarray(tokens.ids[lo:hi]), lo,
                                       self.layout.special_tokens))
        return pairs

    def _batches(self, pairs: list[_Pair]):
        """Pairs sorted by length, cut into batches of at most max_batch_pairs."""
        order = sorted(range(len(pairs)), key=lambda i: pairs[i].length)
        for k in range(0, len(order), self.max_batch_pairs):
            yield [pairs[i] for i in order[k:k + self.max_batch_pairs]]

    def encode_batch(self, batch: list[_Pair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Question and window in the tokenizer's pair layout (``[CLS] q [SEP] w [SEP]`` for
        BERT), padded to the longest pair of this batch."""
        width = max(p.length for p in batch)
        ids = np.full((len(batch), width), self.layout.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        types = np.zeros((len(batch), width), dtype=np.int64)
        for row, p in enumerate(batch):
            n = self.layout.fill(ids[row], types[row], p.question, p.context)
            mask[row, :n] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types)

    def _forward(self, batch: list[_Pair]) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            out = self.module(*self.encode_batch(batch))
        start, end = out[0], out[1]
        return start.float().numpy(), end.float().numpy()

    # --- reading -----------------------------------------------------------------------

    def read_many(self, jobs: list[tuple[str, list[tuple[str, PassageTokens]]]], top: int = 1
                  ) -> list[list[Span | None]]:
        """jobs: (question, [(passage_text, passage_tokens), ...]). Returns for each job, for each
        passage, the best span over its windows (None if it has no windows), with up to
        ``top - 1`` next distinct spans of the passage in its ``more``. All pairs of all
        jobs run in padded batches of at most max_batch_pairs pairs, grouped by length so each
        batch pads to its own longest pair (never to max_seq_len); each question is tokenized
        once."""
        results: list[list[Span | None]] = [[None] * len(passages) for _q, passages in jobs]
        nulls: dict[tuple[int, int], float] = {}
        log_z: dict[tuple[int, int], dict[int, float]] = {}
        kept: dict[tuple[int, int], np.ndarray] = {}
        more: dict[tuple[int, int], list[Span]] = {}
        pairs = self._pairs(jobs)
        at_null = self.layout.null_position
        for batch in self._batches(pairs):
            start_logits, end_logits = self._forward(batch)
            for row, p in enumerate(batch):
                where = (p.job, p.passage)
                null = float(start_logits[row, at_null]) + float(end_logits[row, at_null])
                nulls[where] = min(null, nulls.get(where, null))
                c0 = self.layout.context_start(len(p.question))
                found = best_span(start_logits[row], end_logits[row], c0, c0 + len(p.context),
                                  self.max_answer_tokens)
                if found is None:
                    continue
                band = span_band(start_logits[row], end_logits[row], c0, c0 + len(p.context),
                                 self.max_answer_tokens)[1]
                log_z.setdefault(where, {})[p.window] = log_partition(band, self.temperature)
                if self.keep_candidates:
                    kept[where] = _top(np.concatenate([kept.get(where, np.zeros(0)),
                                                       band.reshape(-1)]), self.keep_candidates)
                text, tokens = jobs[p.job][1][p.passage]
                if top > 1:
                    more.setdefault(where, []).extend(_window_spans(p, tokens, band, top))
                i, j, score = found
                lo, hi = span_chars(tokens.offsets, p.context_offset + i - c0,
                                    p.context_offset + j - c0)
                span = Span(p.passage, p.window, lo, hi, text[lo:hi], score)
                if _better(span, results[p.job][p.passage]):
                    results[p.job][p.passage] = span
        out: list[list[Span | None]] = []
        for j, spans in enumerate(results):
            out.append([])
            for span in spans:
                if span is not None:
                    where = (j, span.passage)
                    span = self._judge(span, nulls.get(where), _in_order(log_z[where]),
                                       kept.get(where))
                    span = self._with_more(span, more.get(where, []), top,
                                           jobs[j][1][span.passage][0])
                out[-1].append(span)
        return out

    def _judge(self, span: Span, null_score: float | None, log_z: float,
               candidates: np.ndarray | None) -> Span:
        """The span with its passage's null score and softmax denominator, marked null if
        the threshold says so."""
        span = replace(span, null_score=null_score, log_z=log_z, temperature=self.temperature,
                       candidates=() if candidates is None else tuple(candidates.tolist()))
        return replace(span, null=self._abstains(span))

    def _abstains(self, span: Span) -> bool:
        """The null threshold or the confidence floor says no answer rather than ``span``
        (``span`` carries its passage's null score and softmax denominator)."""
        if (span.null_score is not None and self.null_threshold is not None
                and says_no_answer(span.score, span.null_score, self.null_threshold)):
            return True
        return self.min_confidence is not None and span.confidence < self.min_confidence

    def _with_more(self, best: Span, found: list[Span], top: int, text: str) -> Span:
        """``best`` with its passage's next distinct spans: every window's candidates,
        best first (ties: window, then offsets), none sharing a character with a better one
        or empty, and none the reader would abstain from (a passage that abstains has
        none). Windows overlap, so the same span found twice is kept once."""
        if top <= 1 or best.null:
            return best
        taken, chosen = [(best.start, best.end)], []
        for span in sorted(found, key=lambda s: (-s.score, s.window, s.start, s.end)):
            if len(chosen) == top - 1:
                break
            if span.start >= span.end or any(overlaps((span.start, span.end), t)
                                             for t in taken):
                continue
            span = replace(span, text=text[span.start:span.end], null_score=best.null_score,
                           log_z=best.log_z, temperature=best.temperature)
            if self._abstains(span):
                break  # the spans after it score lower: the reader abstains from them too
            taken.append((span.start, span.end))
            chosen.append(span)
        return replace(best, more=tuple(chosen))

    def read(self, question: str, passages: list[tuple[str, PassageTokens]]) -> Span | None:
        """The best span over all passages (ties: the earliest passage, then window)."""
        return best_of(self.read_many([(question, passages)])[0])

    def warm_up(self) -> None:
        """One small forward (twice: TorchScript optimizes on its second call) so the first
        real request isn't slow."""
        filler = np.asarray([self.layout.pad_id] * 4, dtype=np.int64)
        pair = _Pair(0, 0, 0, filler[:1], filler, 0, self.layout.special_tokens)
        for _ in range(2):
            self._forward([pair, pair])


def _window_spans(pair: _Pair, tokens: PassageTokens, band: np.ndarray, top: int
                  ) -> list[Span]:
    """A window's ``top`` distinct spans in passage characters (text filled in later)."""
    at = pair.context_offset
    return [Span(pair.passage, pair.window, *span_chars(tokens.offsets, at + i, at + j), "",
                 score) for i, j, score in distinct_spans(band, top)]


def _in_order(parts: dict[int, float]) -> float:
    """The windows' log partitions added in window order (so batching never changes it)."""
    return float(np.logaddexp.reduce([parts[w] for w in sorted(parts)]))


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """The n highest finite scores, highest first."""
    finite = scores[np.isfinite(scores)]
    return np.sort(finite)[::-1][:n]


def _better(candidate: Span, incumbent: Span | None) -> bool:
    """Higher score wins; on a tie the earlier (passage, window, start, end) stays."""
    if incumbent is None:
        return True
    if candidate.score != incumbent.score:
        return candidate.score > incumbent.score
    return ((candidate.passage, candidate.window, candidate.start, candidate.end)
            < (incumbent.passage, incumbent.window, incumbent.start, incumbent.end))


def best_of(spans: list[Span | None]) -> Span | None:
    """The best of several spans (None entries skipped), ties to the earliest."""
    best = None
    for span in spans:
        if span is not None and _better(span, best):
            best = span
    return best
