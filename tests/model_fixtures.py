"""Session fixtures that build tiny models (random weights, real WordPiece tokenizer).

``tiny_checkpoint``: a Hugging Face checkpoint folder (BertForQuestionAnswering, hidden 32,
2 layers, 2 heads, fixed seed) with a fast tokenizer whose WordPiece vocabulary is trained
with the ``tokenizers`` package on SQuAD contexts (data/squad/train.json).
``tiny_artifact``: its shardqa export, fp32 + int8. Both are deterministic, so the same
session always pushes the same model version. ``tiny_encoder_checkpoint`` /
``tiny_encoder_artifact``: the same for a sentence encoder (BertModel, hidden 32, with a
sentence-transformers config: mean pooling, L2 norm, 128 tokens); ``tiny_encoder_b_artifact``
another one (hidden 48).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardqa.datasets import SQUAD_TRAIN

TINY_VOCAB = 3000


def wordpiece_tokenizer(tokens: list[str]):
    """A real fast BERT-layout WordPiece tokenizer (uncased) whose vocabulary is the five
    special tokens, then ``tokens`` in order: for tests that need to know every id."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    names = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *tokens]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(names))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def training_text(limit: int = 300) -> list[str]:
    """The first ``limit`` SQuAD training contexts, in file order."""
    data = json.loads(SQUAD_TRAIN.read_text(encoding="utf-8"))
    contexts = [para["context"] for article in data["data"] for para in article["paragraphs"]]
    return contexts[:limit]


def build_tiny_checkpoint(folder: Path) -> Path:
    """Write the tiny BERT QA checkpoint to ``folder`` and return it."""
    from transformers import BertForQuestionAnswering

    return _build_tiny(folder, BertForQuestionAnswering)


def build_tiny_encoder(folder: Path, hidden: int = 32) -> Path:
    """Write the tiny sentence encoder (BertModel + sentence-transformers config)."""
    from transformers import BertModel

    _build_tiny(folder, BertModel, hidden)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models."
                "Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers."
                "models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers."
                "models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    return folder


def _build_tiny(folder: Path, model_class, hidden: int = 32) -> Path:
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(training_text(), vocab_size=TINY_VOCAB, min_frequency=1,
                           show_progress=False)
    # The trainer breaks merge ties in hash order, so which few rare pieces make the cut can
    # vary between processes; fixing the id order (specials, then sorted) keeps everything
    # else stable. The vocabulary size, hence the weights and reader.pt, never changes.
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    rest = sorted(set(wp.get_vocab()) - set(specials))
    vocab = {token: i for i, token in enumerate(specials + rest)}
    # transformers 5: BertTokenizer is the fast (tokenizers) one and ignores vocab_file=
    hf_tok = BertTokenizer(vocab=vocab, do_lower_case=True)
    hf_tok.save_pretrained(str(folder))

    torch.manual_seed(1234)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=512)
    model = model_class(config).eval()
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random-weight BertForQuestionAnswering checkpoint folder (fast tokenizer)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt") / "tiny-bert-qa")


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory) -> Path:
    """The shardqa export of ``tiny_checkpoint``: reader.pt, reader-int8.pt, tokenizer.json,
    shardqa-model.json (name "tiny", max_seq_len 384)."""
    from models.export import export

    out = tmp_path_factory.mktemp("tiny-artifact") / "tiny"
    return export(tiny_checkpoint, "tiny", out, int8=True, max_seq_len=384)


@pytest.fixture(scope="session")
def tiny_encoder_checkpoint(tmp_path_factory) -> Path:
    """A tiny random-weight sentence encoder folder (BertModel, sentence-transformers config)."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-enc") / "tiny-encoder")


@pytest.fixture(scope="session")
def tiny_encoder_artifact(tiny_encoder_checkpoint, tmp_path_factory) -> Path:
    """The shardqa export of ``tiny_encoder_checkpoint``: encoder.pt, encoder-int8.pt,
    tokenizer.json, shardqa-model.json (kind "encoder", name "tiny-enc", dim 32)."""
    from models.export_encoder import export_encoder

    out = tmp_path_factory.mktemp("tiny-enc-artifact") / "tiny-enc"
    return export_encoder(tiny_encoder_checkpoint, "tiny-enc", out, int8=True)


@pytest.fixture(scope="session")
def tiny_encoder_b_artifact(tmp_path_factory) -> Path:
    """A second, different tiny encoder (hidden 48: dim 48), exported as "tiny-enc-b": what
    a new encoder pushed over ``tiny_encoder_artifact`` looks like (issue 13, re-embed)."""
    from models.export_encoder import export_encoder

    source = build_tiny_encoder(tmp_path_factory.mktemp("tiny-enc-b") / "tiny-encoder-b", 48)
    out = tmp_path_factory.mktemp("tiny-enc-b-artifact") / "tiny-enc-b"
    return export_encoder(source, "tiny-enc-b", out, int8=False)
