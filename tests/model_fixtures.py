"""Session fixtures that build tiny reader models (random weights, real WordPiece tokenizer).

``tiny_checkpoint``: a Hugging Face checkpoint folder (BertForQuestionAnswering, hidden 32,
2 layers, 2 heads, fixed seed) with a fast tokenizer whose WordPiece vocabulary is trained
with the ``tokenizers`` package on SQuAD contexts (data/squad/train.json).
``tiny_artifact``: its shardqa export, fp32 + int8. Both are deterministic, so the same
session always pushes the same model version.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardqa.datasets import SQUAD_TRAIN

TINY_VOCAB = 3000


def training_text(limit: int = 300) -> list[str]:
    """The first ``limit`` SQuAD training contexts, in file order."""
    data = json.loads(SQUAD_TRAIN.read_text(encoding="utf-8"))
    contexts = [para["context"] for article in data["data"] for para in article["paragraphs"]]
    return contexts[:limit]


def build_tiny_checkpoint(folder: Path) -> Path:
    """Write the tiny BERT QA checkpoint to ``folder`` and return it."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizer

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
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=512)
    model = BertForQuestionAnswering(config).eval()
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
