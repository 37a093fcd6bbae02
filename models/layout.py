"""How a question and a passage window become one model input: the tokenizer's pair template.

Checkpoints are fine-tuned on their tokenizer's own pair layout: BERT, ALBERT, ELECTRA and
DeBERTa read ``[CLS] q [SEP] c [SEP]`` with token types 0/1, RoBERTa, XLM-R and MPNet read
``<s> q </s></s> c </s>`` with token type 0 throughout. The layout is read once from the
tokenizer's post-processor (by encoding a probe pair), so the reader feeds every model what it
was trained on; a tokenizer without a pair template gets the BERT layout from its special
tokens' names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tokenizers

from cluster.errors import ShardqaError

#: Special tokens of the input layout, BERT names first, then RoBERTa-style fallbacks.
_SPECIALS = {"cls": ("[CLS]", "<s>"), "sep": ("[SEP]", "</s>"), "pad": ("[PAD]", "<pad>")}


class LayoutError(ShardqaError):
    """The tokenizer lacks what a question + passage input needs."""

    exit_code = 2


def special_ids(tokenizer: tokenizers.Tokenizer) -> tuple[int, int, int]:
    """(cls, sep, pad) ids from the tokenizer's vocabulary."""
    found = []
    for role, names in _SPECIALS.items():
        ids = [tokenizer.token_to_id(n) for n in names]
        ids = [i for i in ids if i is not None]
        if not ids:
            raise LayoutError(
                f"the tokenizer has no {role} token (looked for {', '.join(names)})"
            )
        found.append(ids[0])
    return found[0], found[1], found[2]


@dataclass(frozen=True)
class PairLayout:
    """``prefix q middle c suffix`` with one token type per part; the null ("no answer")
    score is read at ``null_position`` (the first prefix token, [CLS] or <s>)."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    types: tuple[int, int, int, int, int]  # prefix, question, middle, context, suffix
    pad_id: int

    @property
    def special_tokens(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    @property
    def null_position(self) -> int:
        return 0

    def context_start(self, question_tokens: int) -> int:
        return len(self.prefix) + question_tokens + len(self.middle)

    def fill(self, ids: np.ndarray, types: np.ndarray, question: np.ndarray,
             context: np.ndarray) -> int:
        """Write one pair into the row ``ids``/``types`` (already padded); returns its length."""
        pos = 0
        parts = (self.prefix, question, self.middle, context, self.suffix)
        for part, type_id in zip(parts, self.types, strict=True):
            n = len(part)
            ids[pos:pos + n] = part
            types[pos:pos + n] = type_id
            pos += n
        return pos


def pair_layout(tokenizer: tokenizers.Tokenizer) -> PairLayout:
    """The layout the tokenizer's post-processor builds for a (question, passage) pair."""
    _cls, _sep, pad = special_ids(tokenizer)
    enc = tokenizer.encode("a", "b", add_special_tokens=True)
    seq = enc.sequence_ids
    if 0 not in seq or 1 not in seq or not any(s is None for s in seq):
        return bert_layout(tokenizer)
    q_first, q_last = seq.index(0), len(seq) - 1 - seq[::-1].index(0)
    c_first, c_last = seq.index(1), len(seq) - 1 - seq[::-1].index(1)
    if q_first == 0:
        raise LayoutError("the tokenizer's pair template has no leading special token "
                          "([CLS] or <s>) to read the no-answer score at")
    if not q_last < c_first:
        raise LayoutError("the tokenizer's pair template puts the passage before the question")
    ids, tt = enc.ids, enc.type_ids

    def type_of(lo: int, hi: int, default: int) -> int:
        return tt[lo] if hi > lo else default

    return PairLayout(
        prefix=tuple(ids[:q_first]), middle=tuple(ids[q_last + 1:c_first]),
        suffix=tuple(ids[c_last + 1:]),
        types=(type_of(0, q_first, tt[q_first]), tt[q_first],
               type_of(q_last + 1, c_first, tt[q_first]), tt[c_first],
               type_of(c_last + 1, len(ids), tt[c_first])),
        pad_id=pad)


def bert_layout(tokenizer: tokenizers.Tokenizer) -> PairLayout:
    """``[CLS] q [SEP] c [SEP]``, types 0 then 1: for tokenizers with no pair template."""
    cls, sep, pad = special_ids(tokenizer)
    return PairLayout(prefix=(cls,), middle=(sep,), suffix=(sep,), types=(0, 0, 0, 1, 1),
                      pad_id=pad)
