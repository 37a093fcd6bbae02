"""Issue 17: every common extractive-QA architecture exports, stores windows right and reads
through the pipeline exactly as the model itself does, or is refused with one line."""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster import keys, partitions
from gears import ranking
from gears.asker import MIN_RANK_RATIO, RETRIEVAL_WEIGHT, Asker, answer_score
from models.decoding import best_span
from models.export import FP32_TOLERANCE, export, read_metadata
from models.tokenization import tokenize_passages, trim_leading_space, window_token_budget
from tests.architecture_fixtures import ARCHITECTURES, SEQ_LEN, build_checkpoint
from tests.conftest import WorkerPool, run_cli, start_pipeline
from tests.corpus import CORPUS, QUESTIONS
from tests.model_fixtures import training_text

#: one per tokenizer family and layout: WordPiece without token types, byte-level BPE with
#: <s> q </s></s> c </s>, SentencePiece-style with the same, SentencePiece with [CLS]/[SEP]
PIPELINE = ("distilbert", "roberta", "xlm-roberta", "deberta-v3")
ODD_TEXT = "Naïve café — Zürich's “Œuvre” costs 3½ €; 東京 is big.  Two  spaces\tand\ttabs."


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name -> (checkpoint folder, artifact folder), built on first use."""
    root = tmp_path_factory.mktemp("zoo")
    built: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in built:
            ckpt = build_checkpoint(ARCHITECTURES[name], root / name)
            art = export(ckpt, name, root / f"{name}-artifact", int8=True, max_seq_len=SEQ_LEN)
            built[name] = ckpt, art
        return built[name]

    return get


class Standalone:
    """The Hugging Face model run eagerly on its own tokenizer's (question, passage) input."""

    def __init__(self, ckpt: Path):
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(ckpt))
        self.model = AutoModelForQuestionAnswering.from_pretrained(str(ckpt)).eval()
        self.args = set(inspect.signature(self.model.forward).parameters)

    def encode(self, question: str, passage: str):
        return self.tok(question, passage, return_offsets_mapping=True, return_token_type_ids=True,
                        return_tensors="pt")

    def read(self, question: str, passage: str) -> tuple[int, int, float, float]:
        """(start, end, span score, null score) of the best span, in passage characters."""
        enc = self.encode(question, passage)
        inputs = {k: v for k, v in enc.items() if k in self.args}
        with torch.inference_mode():
            out = self.model(**inputs)
        start, end = out.start_logits[0].numpy(), out.end_logits[0].numpy()
        ctx = [i for i, s in enumerate(enc.sequence_ids(0)) if s == 1]
        i, j, score = best_span(start, end, ctx[0], ctx[-1] + 1, 30)
        offsets = enc["offset_mapping"][0].numpy().astype(np.int32).copy()
        trim_leading_space(passage, offsets)
        return int(offsets[i, 0]), int(offsets[j, 1]), score, float(start[0] + end[0])


def _reader(art: Path):
    from models.artifact import load_reader

    return load_reader(art)[0]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_export_parity_and_input_layout(name, zoo):
    ckpt, art = zoo(name)
    meta = read_metadata(art)
    assert meta["parity"]["fp32"]["max_abs_diff"] <= FP32_TOLERANCE
    assert meta["parity"]["fp32"]["span_agreement"] == 1.0
    assert set(meta["variants"]) == {"fp32", "int8"}
    # the reader builds exactly the input the checkpoint's own tokenizer builds for a pair
    reader, standalone = _reader(art), Standalone(ckpt)
    tok = reader.tokenizer
    for question, doc in zip(QUESTIONS, CORPUS, strict=True):
        tokens = tokenize_passages(tok, [doc.text], 200, 32)[0]
        ids, _mask, types = reader.encode_batch(reader._pairs([(question, [(doc.text, tokens)])]))
        enc = standalone.encode(question, doc.text)
        assert ids[0].tolist() == enc["input_ids"][0].tolist()
        if ARCHITECTURES[name].token_types:
            assert types[0].tolist() == enc["token_type_ids"][0].tolist()
            assert 1 in types[0].tolist()
        else:
            assert not types.any()


def _surface(family: str, token: str) -> str | None:
    """The passage text a token stands for (lowercased/normalized as the tokenizer does);
    None when a single token cannot say (a byte-level piece of a multi-byte character)."""
    if family == "wordpiece":
        return token[2:] if token.startswith("##") else token
    if family == "bpe":
        from tokenizers import decoders

        text = decoders.ByteLevel().decode([token])
        return None if "\ufffd" in text else text.lstrip()
    return token.replace("\u2581", " ").lstrip()


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_stored_windows_map_back_to_the_passage(name, zoo):
    _ckpt, art = zoo(name)
    reader = _reader(art)
    tok, family = reader.tokenizer, ARCHITECTURES[name].family
    texts = training_text(30) + [d.text for d in CORPUS] + [ODD_TEXT, "   ", ""]
    window, stride = 40, 16
    checked = 0
    for text, stored in zip(texts, tokenize_passages(tok, texts, window, stride), strict=True):
        ids, offsets, windows = stored.ids, stored.offsets, stored.windows
        assert len(ids) == len(offsets)
        assert (offsets[:, 0] >= 0).all() and (offsets[:, 0] <= offsets[:, 1]).all()
        assert (offsets[:, 1] <= len(text)).all()
        for token_id, (lo, hi) in zip(ids.tolist(), offsets.tolist(), strict=True):
            token = tok.id_to_token(token_id)
            surface = _surface(family, token)
            if token == ARCHITECTURES[name].specials[3] or not surface:
                continue
            piece = text[lo:hi]
            assert piece and not piece[0].isspace(), (token, piece)
            if surface is not None:
                norm = tok.normalizer.normalize_str(piece) if tok.normalizer else piece
                # one character the normalizer expands (NFKC: "½" -> "1⁄2") may be read as
                # several tokens, each mapping back to all of it
                assert norm == surface or len(piece) == 1 and surface in norm, (token, piece)
                checked += 1
        if len(ids):  # windows cover every token, overlap by the stride, fit the budget
            assert windows[0, 0] == 0 and windows[-1, 1] == len(ids)
            assert ((windows[:, 1] - windows[:, 0]) <= window).all()
            assert (windows[1:, 0] == windows[:-1, 1] - stride).all()
        else:
            assert len(windows) == 0
    assert checked > 1000
    # the worker's window budget leaves room for this layout's special tokens
    budget = window_token_budget(SEQ_LEN, reader.max_question_tokens,
                                 reader.layout.special_tokens)
    assert budget + reader.max_question_tokens + reader.layout.special_tokens == SEQ_LEN


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_reader_equals_the_eager_model(name, zoo):
    ckpt, art = zoo(name)
    reader, standalone = _reader(art), Standalone(ckpt)
    for question, doc in zip(QUESTIONS, CORPUS, strict=True):
        tokens = tokenize_passages(reader.tokenizer, [doc.text], 200, 32)[0]
        span = reader.read(question, [(doc.text, tokens)])
        start, end, score, null = standalone.read(question, doc.text)
        assert (span.start, span.end) == (start, end)
        assert span.text == doc.text[start:end] and span.text == span.text.strip()
        assert span.score == pytest.approx(score, abs=1e-4)
        assert span.null_score == pytest.approx(null, abs=1e-4) and not span.null


def test_an_unsupported_layout_is_refused_in_one_line(tmp_path):
    """A tokenizer whose pair template ends with its classifier token (XLNet-style) has no
    leading position to read "no answer" at: export refuses it, exit code 2, one line."""
    from tokenizers import Tokenizer, processors

    ckpt = build_checkpoint(ARCHITECTURES["bert"], tmp_path / "cls-last")
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in ("[CLS]", "[SEP]")}
    tok.post_processor = processors.TemplateProcessing(
        single="$A [SEP] [CLS]", pair="$A [SEP] $B:1 [SEP]:1 [CLS]:1",
        special_tokens=list(ids.items()))
    tok.save(str(ckpt / "tokenizer.json"))
    proc = run_cli("model", "export", str(ckpt), "--name", "x", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and "leading special token" in message
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


# --- through the pipeline ---------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline_pool(redis_cluster, tiny_artifact, tmp_path_factory):
    """One pipeline (3 masters, real workers) the architectures take turns on."""
    redis_cluster.flush()
    pool = WorkerPool(redis_cluster, tmp_path_factory.mktemp("zoo-workers"))
    try:
        client = start_pipeline(redis_cluster, pool, tiny_artifact)
        yield client, pool
    finally:
        pool.stop_all()


def serve(client, artifact: Path, timeout: float = 60) -> str:
    """Push ``artifact`` and wait until every worker reads with it; returns its version."""
    from models import store

    version = store.push(client, artifact)["version"]
    deadline = time.monotonic() + timeout
    while True:
        beats = [json.loads(v) for v in client.hgetall(keys.workers()).values()
                 if time.time() - json.loads(v)["time"] < 3]
        if len(beats) >= 3 and all(str(b.get("model", "")).startswith(version) for b in beats):
            return version
        assert time.monotonic() < deadline, f"workers did not load {version}: {beats}"
        time.sleep(0.1)


def standalone_answer(client, standalone: Standalone, question: str, k: int = 5):
    """(passage id, start, end, score) the eager model picks over the same ranked passages."""
    pmap = partitions.load(client)
    ranked = ranking.above_floor(ranking.rank(client, pmap, question, k), MIN_RANK_RATIO)
    top = max(r.score for r in ranked)
    best = None
    for r in ranked:
        text = client.hget(keys.passage(pmap.for_passage(r.pid).tag, r.pid), "text").decode()
        start, end, span_score, _null = standalone.read(question, text)
        score = answer_score(span_score, r.score, top, RETRIEVAL_WEIGHT)
        key = (-score, r.pid, start, end)
        if best is None or key < best:
            best = key
    return best[1], best[2], best[3], -best[0]


@pytest.mark.parametrize("name", PIPELINE)
def test_pipeline_answers_as_the_standalone_model(name, zoo, pipeline_pool):
    client, _pool = pipeline_pool
    ckpt, art = zoo(name)
    serve(client, art)
    standalone = Standalone(ckpt)
    asker = Asker(client, timeout_s=30)
    for question in QUESTIONS:
        answer = asker.ask(question, use_cache=False)
        pid, start, end, score = standalone_answer(client, standalone, question)
        assert (answer.passage_id, answer.start, answer.end) == (pid, start, end), question
        assert answer.answer == answer.passage_text[start:end]
        assert answer.score == pytest.approx(score, abs=1e-3)


def test_trim_leading_space_moves_starts_past_any_whitespace():
    text = "a  b\tc \u3000d"
    offsets = np.asarray([[0, 1], [1, 4], [4, 6], [6, 9], [9, 9]], dtype=np.int32)
    trim_leading_space(text, offsets)
    assert offsets.tolist() == [[0, 1], [3, 4], [5, 6], [8, 9], [9, 9]]
    assert [text[s:e] for s, e in offsets.tolist()] == ["a", "b", "c", "d", ""]
    all_space = np.asarray([[0, 3]], dtype=np.int32)
    trim_leading_space("   ", all_space)
    assert all_space.tolist() == [[3, 3]]


def test_layout_from_every_kind_of_post_processor():
    """Real checkpoints ship RobertaProcessing / BertProcessing as well as templates; one
    without a post-processor gets the BERT layout from its special tokens' names."""
    from tokenizers import Tokenizer, processors

    from models.layout import pair_layout
    from tests.architecture_fixtures import _trained

    roberta = Tokenizer.from_str(_trained("bpe", ARCHITECTURES["roberta"].specials))
    s, e, pad = (roberta.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))
    roberta.post_processor = processors.RobertaProcessing(("</s>", e), ("<s>", s),
                                                          trim_offsets=True)
    layout = pair_layout(roberta)
    assert (layout.prefix, layout.middle, layout.suffix) == ((s,), (e, e), (e,))
    assert layout.types == (0, 0, 0, 0, 0) and layout.pad_id == pad
    bert = Tokenizer.from_str(_trained("wordpiece", ARCHITECTURES["bert"].specials))
    c, sep = bert.token_to_id("[CLS]"), bert.token_to_id("[SEP]")
    bert.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", c))
    layout = pair_layout(bert)
    assert (layout.prefix, layout.middle, layout.suffix, layout.types) == \
        ((c,), (sep,), (sep,), (0, 0, 0, 1, 1))
    bert.post_processor = None
    assert pair_layout(bert) == layout
