"""Issue 3: span decoding on crafted logits, against brute force, and end to end through the
real tiny TorchScript reader (decoded text always equals passage[start:end])."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.decoding import best_span, distinct_spans, overlaps, span_band
from models.reader import Reader
from models.tokenization import load_tokenizer, tokenize_passages


def brute_force(start, end, lo, hi, max_len):
    best = None
    for i in range(lo, hi):
        for j in range(i, min(hi, i + max_len)):
            score = float(start[i]) + float(end[j])
            if best is None or score > best[2]:  # strict: keeps the earliest on ties
                best = (i, j, score)
    return best


def test_end_before_start_is_never_returned():
    start = np.zeros(8)
    end = np.zeros(8)
    start[5] = 10.0   # best start ...
    end[2] = 9.0      # ... is after the best end
    assert best_span(start, end, 0, 8) == (5, 5, 10.0)
    start[1] = 1.5    # now 1 -> 2 (10.5) beats 5 -> 5 (10.0)
    assert best_span(start, end, 0, 8) == (1, 2, 10.5)


def test_span_outside_the_passage_is_ignored():
    start = np.array([50.0, 40.0, 0.0, 1.0, 0.0, 0.0, 30.0, 30.0])   # [CLS], question, ..., pad
    end = np.array([50.0, 40.0, 0.0, 0.0, 2.0, 0.0, 30.0, 30.0])
    # passage tokens are positions 2..4 (context_end exclusive)
    assert best_span(start, end, 2, 5) == (3, 4, 3.0)
    # a context that runs past the logits is clipped to them
    assert best_span(start[:4], end[:4], 2, 100) == (3, 3, 1.0)


def test_over_long_span_is_refused():
    start = np.zeros(50)
    end = np.zeros(50)
    start[1], end[40] = 10.0, 10.0    # 40 tokens long
    end[20] = 1.0                     # 20 tokens long
    i, j, score = best_span(start, end, 0, 50, max_answer_tokens=30)
    assert (i, j, score) == (1, 20, 11.0)
    assert best_span(start, end, 0, 50, max_answer_tokens=40) == (1, 40, 20.0)
    assert best_span(start, end, 0, 50, max_answer_tokens=1) == (1, 1, 10.0)
    with pytest.raises(ValueError):
        best_span(start, end, 0, 50, max_answer_tokens=0)


def test_ties_take_earliest_start_then_earliest_end():
    flat = np.ones(6)
    assert best_span(flat, flat, 1, 5) == (1, 1, 2.0)
    start = np.array([0.0, 3.0, 0.0, 3.0, 0.0])
    end = np.array([0.0, 0.0, 2.0, 0.0, 2.0])
    # (1,2), (1,4), (3,4) all score 5: earliest start, then earliest end
    assert best_span(start, end, 0, 5) == (1, 2, 5.0)


def test_empty_context_nan_and_float32():
    z = np.zeros(4)
    assert best_span(z, z, 2, 2) is None
    assert best_span(z, z, 3, 1) is None
    start = np.array([np.nan, 1.0, np.nan], dtype=np.float32)
    end = np.array([np.nan, np.nan, 2.0], dtype=np.float32)
    assert best_span(start, end, 0, 3) == (1, 2, 3.0)
    got = best_span(np.float32([0.2, 0.1]), np.float32([0.3, 0.7]), 0, 2)
    assert got[:2] == (0, 1) and isinstance(got[2], float)
    assert got[2] == float(np.float32(0.2)) + float(np.float32(0.7))


@settings(max_examples=300, deadline=None)
@given(
    logits=st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=1, max_size=40),
    lo=st.integers(0, 10), width=st.integers(0, 40), max_len=st.integers(1, 12),
)
def test_matches_brute_force_including_ties(logits, lo, width, max_len):
    start = np.array([a for a, _ in logits], dtype=np.float32)  # small ints: many ties
    end = np.array([b for _, b in logits], dtype=np.float32)
    hi = lo + width
    expected = brute_force(start, end, lo, min(hi, len(logits)), max_len)
    assert best_span(start, end, lo, hi, max_len) == expected


def brute_force_distinct(start, end, lo, hi, max_len, count):
    """Every valid span by score (ties: earliest start, then end), each taken unless it
    shares a token with one taken before."""
    spans = sorted(((float(start[i]) + float(end[j]), i, j) for i in range(lo, hi)
                    for j in range(i, min(hi, i + max_len))), key=lambda c: (-c[0], c[1], c[2]))
    taken = []
    for score, i, j in spans:
        if len(taken) < count and np.isfinite(score) and not any(
                i <= b and j >= a for a, b, _ in taken):
            taken.append((i, j, score))
    return taken


@settings(max_examples=300, deadline=None)
@given(
    logits=st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=1, max_size=40),
    lo=st.integers(0, 10), width=st.integers(1, 40), max_len=st.integers(1, 12),
    count=st.integers(1, 12),
)
def test_distinct_spans_match_brute_force_and_start_with_the_best(logits, lo, width, max_len,
                                                                  count):
    start = np.array([a for a, _ in logits], dtype=np.float32)
    end = np.array([b for _, b in logits], dtype=np.float32)
    found = span_band(start, end, lo, lo + width, max_len)
    if found is None:
        return
    first, band = found
    got = [(first + i, first + j, score) for i, j, score in distinct_spans(band, count)]
    assert got == brute_force_distinct(start, end, lo, min(lo + width, len(logits)), max_len,
                                       count)
    assert got[0] == best_span(start, end, lo, lo + width, max_len)


def test_distinct_spans_skip_near_copies_of_the_best():
    #            0     1        2        3       4    5      6
    # tokens: [paint by] [Italian] [artist] [Leo] [da] [Vinci]
    start = np.array([0.0, 0.0, 5.0, 0.0, 4.5, 1.0, 0.0])
    end = np.array([0.0, 0.0, 5.0, 3.0, 0.0, 1.0, 4.4])
    band = span_band(start, end, 0, 7, 30)[1]
    # (2, 6) "Italian artist Leo da Vinci" scores 9.4 but holds the best: "Leo da Vinci" next
    assert distinct_spans(band, 3) == [(2, 2, 10.0), (4, 6, 4.5 + 4.4), (3, 3, 3.0)]
    assert distinct_spans(band, 1) == [(2, 2, 10.0)]  # not (2, 3) "Italian artist": overlaps
    assert distinct_spans(np.full((3, 2), -np.inf), 5) == []
    assert overlaps((0, 5), (4, 9)) and not overlaps((0, 5), (5, 9))


# --- through the real reader -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_reader(tiny_artifact):
    tokenizer = load_tokenizer((tiny_artifact / "tokenizer.json").read_text())
    module = torch.jit.load(str(tiny_artifact / "reader.pt"))
    return Reader(module, tokenizer, max_seq_len=48, max_question_tokens=8,
                  max_answer_tokens=6, max_batch_pairs=4, threads=1)


pieces = list("abcdefghij XYZ éüß,.-'\n\t0123") + ["the ", "river", "東京", "🙂", "’", "  "]
passage_text = st.lists(st.sampled_from(pieces), max_size=200).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(passages=st.lists(passage_text, min_size=1, max_size=4),
       question=st.text(min_size=0, max_size=40), stride=st.integers(0, 20))
def test_decoded_text_is_the_passage_slice(tiny_reader, passages, question, stride):
    tokens = tokenize_passages(tiny_reader.tokenizer, passages, window_tokens=37, stride=stride)
    spans = tiny_reader.read_many([(question, list(zip(passages, tokens, strict=True)))])[0]
    for text, tok, span in zip(passages, tokens, spans, strict=True):
        if len(tok.windows) == 0:
            assert span is None
            continue
        assert span is not None
        assert 0 <= span.start <= span.end <= len(text)
        assert span.text == text[span.start:span.end]
        # the span starts at a token start and ends at a token end, within one window
        lo, hi = tok.windows[span.window]
        starts = tok.offsets[lo:hi, 0].tolist()
        ends = tok.offsets[lo:hi, 1].tolist()
        assert span.start in starts and span.end in ends
        first, last = starts.index(span.start), len(ends) - 1 - ends[::-1].index(span.end)
        assert last - first + 1 <= tiny_reader.max_answer_tokens
    # with the next distinct spans: the best is the same, the others are slices of the
    # passage, score no higher, and share no character with one another
    several = tiny_reader.read_many([(question, list(zip(passages, tokens, strict=True)))],
                                    top=4)[0]
    assert several == spans and not any(s.more for s in spans if s)
    for text, span in zip(passages, several, strict=True):
        if span is None:
            continue
        assert len(span.more) <= 3
        chosen = [span, *span.more]
        for a in span.more:
            assert a.text == text[a.start:a.end] and a.start < a.end
            assert a.score <= span.score and a.log_z == span.log_z and a.passage == span.passage
        assert [a.score for a in chosen] == sorted((a.score for a in chosen), reverse=True)
        assert not any(overlaps((a.start, a.end), (b.start, b.end))
                       for x, a in enumerate(chosen) for b in chosen[x + 1:])
