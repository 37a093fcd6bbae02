"""SQuAD v1.1 data for the reader: reading the JSON, windowed features, and the official metric.

Training and evaluation must cut passages into windows exactly the way the reader sees them
at answer time (question first, context second, stride overlap), and score answers with the
official SQuAD normalization, so both live here once.
"""

from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from cluster.errors import ShardqaError
from models.tokenization import DEFAULT_STRIDE

CLS_INDEX = 0  # windows that do not contain the answer point start and end here


class SquadFormatError(ShardqaError):
    """The file is not SQuAD v1.1 JSON."""

    exit_code = 2


@dataclass(frozen=True)
class SquadExample:
    """One question with its own paragraph and its gold answers (text and char start)."""

    id: str
    title: str
    paragraph_index: int
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]

    @property
    def has_answer(self) -> bool:
        """False for SQuAD 2.0's unanswerable questions (is_impossible, no answers)."""
        return bool(self.answers)


@dataclass
class TrainFeature:
    """One window of one example with the answer's token positions (CLS when absent)."""

    example_index: int
    input_ids: list[int]
    token_type_ids: list[int]
    start_position: int
    end_position: int


@dataclass
class EvalFeature:
    """One window kept with what is needed to map a token span back to characters."""

    example_index: int
    input_ids: list[int]
    token_type_ids: list[int]
    context_start: int  # first context token in the window
    context_end: int  # one past the last context token
    offsets: list[tuple[int, int]] = field(repr=False)


def read_squad(path: str | Path) -> list[SquadExample]:
    """Every question of a SQuAD v1.1 or v2.0 file, in file order (an unanswerable v2.0
    question has no answers; its ``plausible_answers`` are not gold)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SquadFormatError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SquadFormatError(f"{path}: not a SQuAD JSON file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise SquadFormatError(f"{path}: not SQuAD v1.1 JSON (no top-level 'data' list)")
    examples: list[SquadExample] = []
    try:
        for article in data["data"]:
            title = str(article.get("title", ""))
            for p_index, paragraph in enumerate(article["paragraphs"]):
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    answers = [] if qa.get("is_impossible") else qa.get("answers") or []
                    examples.append(SquadExample(
                        id=str(qa["id"]), title=title, paragraph_index=p_index,
                        context=context, question=qa["question"],
                        answers=tuple(a["text"] for a in answers),
                        answer_starts=tuple(int(a["answer_start"]) for a in answers),
                    ))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise SquadFormatError(f"{path}: malformed SQuAD entry ({exc!r})") from None
    return examples


def _tokenize(tokenizer, examples: list[SquadExample], max_seq_len: int, stride: int):
    if stride >= max_seq_len:
        raise ShardqaError(f"stride {stride} must be smaller than max_seq_len {max_seq_len}")
    return tokenizer(
        [e.question.lstrip() for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_seq_len,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
        return_token_type_ids=True,
    )


def _context_range(sequence_ids: list[int | None]) -> tuple[int, int]:
    first = sequence_ids.index(1)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
    return first, last + 1


def prepare_train_features(examples: list[SquadExample], tokenizer, max_seq_len: int = 384,
                           stride: int = DEFAULT_STRIDE, chunk: int = 1000) -> list[TrainFeature]:
    """Windows with the first gold answer's start/end token; CLS (0) if a window misses it."""
    features: list[TrainFeature] = []
    for base in range(0, len(examples), chunk):
        part = examples[base:base + chunk]
        enc = _tokenize(tokenizer, part, max_seq_len, stride)
        for w, sample in enumerate(enc["overflow_to_sample_mapping"]):
            example = part[sample]
            offsets = enc["offset_mapping"][w]
            ctx_start, ctx_end = _context_range(enc.sequence_ids(w))
            start_pos = end_pos = CLS_INDEX
            if example.answers:
                a_start = example.answer_starts[0]
                a_end = a_start + len(example.answers[0])
                if offsets[ctx_start][0] <= a_start and offsets[ctx_end - 1][1] >= a_end:
                    s = ctx_start
                    while s < ctx_end and offsets[s][0] <= a_start:
                        s += 1
                    e = ctx_end - 1
                    while e >= ctx_start and offsets[e][1] >= a_end:
                        e -= 1
                    start_pos, end_pos = s - 1, e + 1
            features.append(TrainFeature(
                example_index=base + sample, input_ids=list(enc["input_ids"][w]),
                token_type_ids=list(enc["token_type_ids"][w]),
                start_position=start_pos, end_position=end_pos,
            ))
    return features


def prepare_eval_features(examples: list[SquadExample], tokenizer, max_seq_len: int = 384,
                          stride: int = DEFAULT_STRIDE, chunk: int = 1000) -> list[EvalFeature]:
    """Windows with their context token range and char offsets, for decoding predictions."""
    features: list[EvalFeature] = []
    for base in range(0, len(examples), chunk):
        part = examples[base:base + chunk]
        enc = _tokenize(tokenizer, part, max_seq_len, stride)
        for w, sample in enumerate(enc["overflow_to_sample_mapping"]):
            ctx_start, ctx_end = _context_range(enc.sequence_ids(w))
            features.append(EvalFeature(
                example_index=base + sample, input_ids=list(enc["input_ids"][w]),
                token_type_ids=list(enc["token_type_ids"][w]),
                context_start=ctx_start, context_end=ctx_end,
                offsets=[tuple(o) for o in enc["offset_mapping"][w]],
            ))
    return features


# --- the official SQuAD v1.1 metric (evaluate-v1.1.py) -------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalized strings."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def score_answer(prediction: str, golds: tuple[str, ...] | list[str]) -> tuple[float, float]:
    """(EM, F1) of one prediction, each the max over the gold answers. No gold answers is
    SQuAD 2.0's "no answer": an empty prediction scores 1, anything else 0 (as the official
    script)."""
    if not golds:
        return (1.0, 1.0) if not normalize_answer(prediction) else (0.0, 0.0)
    return (max(exact_match(prediction, g) for g in golds),
            max(f1(prediction, g) for g in golds))


def squad_scores(predictions: dict[str, str], examples: list[SquadExample]) -> dict[str, float]:
    """EM and F1 in percent over all examples; a missing prediction counts as wrong."""
    if not examples:
        return {"exact_match": 0.0, "f1": 0.0, "count": 0}
    em_total = f1_total = 0.0
    for example in examples:
        em, f = score_answer(predictions.get(example.id, ""), example.answers)
        em_total += em
        f1_total += f
    n = len(examples)
    return {"exact_match": 100.0 * em_total / n, "f1": 100.0 * f1_total / n, "count": n}
