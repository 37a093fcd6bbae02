"""Tiny random readers of every common extractive-QA architecture, with real tokenizers.

Each architecture gets a model built from its transformers config class (hidden 32, 2 layers,
2 heads, fixed seed; nothing downloaded) and a tokenizer of its kind trained with
``tokenizers`` on SQuAD contexts: WordPiece (BERT, DistilBERT, ELECTRA, MPNet), byte-level
BPE (RoBERTa, ModernBERT) or a SentencePiece-style Unigram with the Metaspace pre-tokenizer
(XLM-R, ALBERT, DeBERTa-v2/v3), with the special tokens and pair template of the real
checkpoints (``[CLS] q [SEP] c [SEP]`` or ``<s> q </s></s> c </s>``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from tests.model_fixtures import training_text

VOCAB = 2000
SEQ_LEN = 256
BERT_SPECIALS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")
ROBERTA_SPECIALS = ("<s>", "</s>", "<pad>", "<unk>", "<mask>")


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str             # wordpiece, bpe (byte-level) or unigram (SentencePiece-style)
    specials: tuple[str, ...]  # cls, sep, pad, unk, mask
    double_sep: bool        # <s> q </s></s> c </s>
    token_types: bool       # the context has token type 1
    config: str             # transformers config class
    config_args: tuple[tuple[str, object], ...]
    model: str              # transformers *ForQuestionAnswering class


def _size(**extra) -> tuple[tuple[str, object], ...]:
    base = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, **extra}
    return tuple(base.items())


ROBERTA_LIKE = {"type_vocab_size": 1, "pad_token_id": 2, "bos_token_id": 0,
                "eos_token_id": 1, "max_position_embeddings": SEQ_LEN + 4}
ARCHITECTURES = {a.name: a for a in [
    Architecture("bert", "wordpiece", BERT_SPECIALS, False, True, "BertConfig", _size(),
                 "BertForQuestionAnswering"),
    Architecture("distilbert", "wordpiece", BERT_SPECIALS, False, False, "DistilBertConfig",
                 (("dim", 32), ("n_layers", 2), ("n_heads", 2), ("hidden_dim", 64)),
                 "DistilBertForQuestionAnswering"),
    Architecture("roberta", "bpe", ROBERTA_SPECIALS, True, False, "RobertaConfig",
                 _size(**ROBERTA_LIKE), "RobertaForQuestionAnswering"),
    Architecture("xlm-roberta", "unigram", ROBERTA_SPECIALS, True, False, "XLMRobertaConfig",
                 _size(**ROBERTA_LIKE), "XLMRobertaForQuestionAnswering"),
    Architecture("albert", "unigram", BERT_SPECIALS, False, True, "AlbertConfig",
                 _size(embedding_size=16, pad_token_id=2), "AlbertForQuestionAnswering"),
    Architecture("electra", "wordpiece", BERT_SPECIALS, False, True, "ElectraConfig",
                 _size(embedding_size=16), "ElectraForQuestionAnswering"),
    Architecture("deberta-v2", "unigram", BERT_SPECIALS, False, True, "DebertaV2Config",
                 _size(type_vocab_size=2, pad_token_id=2, relative_attention=True,
                       position_buckets=64, pos_att_type=["p2c", "c2p"],
                       position_biased_input=False), "DebertaV2ForQuestionAnswering"),
    Architecture("deberta-v3", "unigram", BERT_SPECIALS, False, False, "DebertaV2Config",
                 _size(type_vocab_size=0, pad_token_id=2, relative_attention=True,
                       position_buckets=64, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                       share_att_key=True, position_biased_input=False),
                 "DebertaV2ForQuestionAnswering"),
    Architecture("mpnet", "wordpiece", ROBERTA_SPECIALS, True, False, "MPNetConfig",
                 _size(pad_token_id=2, max_position_embeddings=SEQ_LEN + 4),
                 "MPNetForQuestionAnswering"),
    Architecture("modernbert", "bpe", BERT_SPECIALS, False, False, "ModernBertConfig",
                 _size(pad_token_id=2, cls_token_id=0, sep_token_id=1, bos_token_id=0,
                       eos_token_id=1, max_position_embeddings=SEQ_LEN,
                       global_attn_every_n_layers=2, local_attention=16),
                 "ModernBertForQuestionAnswering"),
]}


@functools.cache
def _trained(family: str, specials: tuple[str, ...]) -> str:
    """The tokenizer JSON of one family, trained once per process, without a template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    unk = specials[3]
    if family == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=unk))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=list(specials),
                                            show_progress=False)
    elif family == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(specials),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=list(specials),
                                          unk_token=unk, show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    return tok.to_str()


def build_tokenizer(arch: Architecture):
    """The architecture's fast tokenizer (a transformers one) with its pair template."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_trained(arch.family, arch.specials))
    cls, sep, pad, unk, mask = arch.specials
    second = 1 if arch.token_types else 0
    middle = f"{sep}:0 {sep}:0" if arch.double_sep else f"{sep}:0"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls}:0 $A:0 {middle} $B:{second} {sep}:{second}",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token=cls, sep_token=sep,
                                   pad_token=pad, unk_token=unk, mask_token=mask,
                                   bos_token=cls, eos_token=sep)


def build_checkpoint(arch: Architecture, folder: Path, seed: int = 1234) -> Path:
    """Write the architecture's tiny random QA checkpoint and tokenizer to ``folder``."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    hf_tok = build_tokenizer(arch)
    hf_tok.save_pretrained(str(folder))
    config = getattr(transformers, arch.config)(vocab_size=len(hf_tok),
                                                **dict(arch.config_args))
    torch.manual_seed(seed)
    model = getattr(transformers, arch.model)(config).eval()
    model.save_pretrained(str(folder))
    return folder
