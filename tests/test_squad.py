"""SQuAD reading, windowed features and the official metric."""

from __future__ import annotations

import json
import re

import pytest

from cluster.errors import ShardqaError
from models.squad import (
    CLS_INDEX,
    SquadExample,
    exact_match,
    f1,
    normalize_answer,
    prepare_eval_features,
    prepare_train_features,
    read_squad,
    score_answer,
    squad_scores,
)
from tests.model_fixtures import wordpiece_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    """A real fast WordPiece tokenizer over a small vocabulary (uncased, BERT layout)."""
    words = re.findall(r"\w+", (CONTEXT + " who won what when").lower())
    return wordpiece_tokenizer([".", ",", "'", "?", "-", *words])


CONTEXT = ("Super Bowl 50 was played on February 7, 2016, at Levi's Stadium in Santa Clara, "
           "California. The Denver Broncos won the game against the Carolina Panthers. "
           "The Broncos were the AFC champion of the season.")


def example(answer: str, question: str = "Who won Super Bowl 50?", qid: str = "q1",
            nth: int = 0) -> SquadExample:
    start = -1
    for _ in range(nth + 1):
        start = CONTEXT.index(answer, start + 1)
    return SquadExample(id=qid, title="Super_Bowl_50", paragraph_index=0, context=CONTEXT,
                        question=question, answers=(answer,), answer_starts=(start,))


def test_normalize_follows_the_official_script():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theory") == "theory"  # articles only as whole words
    assert normalize_answer("Levi's") == "levis"


def test_exact_match_and_f1():
    assert exact_match("the Broncos", "Broncos.") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0
    assert f1("Denver", "Denver Broncos") == pytest.approx(2 / 3)
    assert f1("Carolina", "Denver Broncos") == 0.0
    assert f1("", "Denver") == 0.0


def test_score_is_the_max_over_gold_answers():
    assert score_answer("Denver", ("Denver Broncos", "Denver")) == (1.0, 1.0)
    assert score_answer("Denver", ()) == (0.0, 0.0)


def test_squad_scores_counts_missing_predictions_as_wrong():
    examples = [example("Denver Broncos", qid="a"), example("Carolina Panthers", qid="b")]
    scores = squad_scores({"a": "the Denver Broncos"}, examples)
    assert scores == {"exact_match": 50.0, "f1": 50.0, "count": 2}


def test_train_features_point_at_the_answer_tokens(tokenizer):
    ex = example("Denver Broncos")
    [feature] = prepare_train_features([ex], tokenizer, max_seq_len=128, stride=32)
    span = feature.input_ids[feature.start_position:feature.end_position + 1]
    assert tokenizer.decode(span) == "denver broncos"


def test_windows_without_the_answer_point_at_cls(tokenizer):
    ex = example("AFC champion")
    features = prepare_train_features([ex], tokenizer, max_seq_len=24, stride=8)
    assert len(features) > 2
    assert all(len(f.input_ids) <= 24 for f in features)
    with_answer = [f for f in features if f.start_position != CLS_INDEX]
    without = [f for f in features if f.start_position == CLS_INDEX]
    assert with_answer and without
    assert all(f.end_position == CLS_INDEX for f in without)
    for f in with_answer:
        assert tokenizer.decode(f.input_ids[f.start_position:f.end_position + 1]) == \
            "afc champion"


def test_an_answer_cut_by_the_window_edge_is_not_labelled(tokenizer):
    # a window that holds only part of the answer must point at CLS, never at half the span
    ex = example("February 7, 2016, at Levi's Stadium in Santa Clara")
    for f in prepare_train_features([ex], tokenizer, max_seq_len=20, stride=4):
        if f.start_position != CLS_INDEX:
            text = tokenizer.decode(f.input_ids[f.start_position:f.end_position + 1])
            assert normalize_answer(text) == normalize_answer(ex.answers[0])


def test_eval_features_map_tokens_back_to_characters(tokenizer):
    ex = example("Carolina Panthers")
    features = prepare_eval_features([ex], tokenizer, max_seq_len=32, stride=8)
    assert len(features) > 1
    covered = set()
    for f in features:
        assert f.input_ids[f.context_start - 1] == tokenizer.sep_token_id
        assert f.input_ids[f.context_end] == tokenizer.sep_token_id
        for i in range(f.context_start, f.context_end):
            start, end = f.offsets[i]
            covered.add(start)
            assert CONTEXT[start:end].lower() == tokenizer.decode([f.input_ids[i]]).lstrip("#")
    # every word of the context is in some window
    assert all(CONTEXT.index(w) in covered for w in ("Super", "Carolina", "season"))


def test_read_squad(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "ctx one", "qas": [{"id": "1", "question": "q?", "answers": [
            {"text": "one", "answer_start": 4}, {"text": "ctx one", "answer_start": 0}]}]},
        {"context": "ctx two", "qas": [{"id": "2", "question": "p?", "answers": [
            {"text": "two", "answer_start": 4}]}]},
    ]}]}))
    first, second = read_squad(path)
    assert first.answers == ("one", "ctx one") and first.answer_starts == (4, 0)
    assert (second.title, second.paragraph_index, second.id) == ("T", 1, "2")


@pytest.mark.parametrize("content", ["not json", "[]", '{"data": [{"title": "T"}]}'])
def test_bad_files_raise_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ShardqaError, match="bad.json"):
        read_squad(path)
    with pytest.raises(ShardqaError, match="no such file"):
        read_squad(tmp_path / "missing.json")
