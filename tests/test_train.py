"""``shardqa model train`` on a tiny BERT: the loss goes down, resume continues exactly."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cluster.errors import ShardqaError
from models.train import TrainSettings, length_grouped_batches, train, train_command
from tests.model_fixtures import wordpiece_tokenizer

PARAGRAPHS = [
    ("Super Bowl 50 was played on February 7, 2016, at Levi's Stadium in Santa Clara. "
     "The Denver Broncos beat the Carolina Panthers 24 to 10.",
     [("Who won Super Bowl 50?", "Denver Broncos"),
      ("Where was Super Bowl 50 played?", "Levi's Stadium"),
      ("When was Super Bowl 50 played?", "February 7, 2016"),
      ("Who lost Super Bowl 50?", "Carolina Panthers")]),
    ("The Normans were the people who gave their name to Normandy, a region in France. "
     "They descended from Norse raiders and pirates from Denmark, Iceland and Norway.",
     [("In what country is Normandy located?", "France"),
      ("Who gave their name to Normandy?", "The Normans"),
      ("From whom did the Normans descend?", "Norse raiders and pirates")]),
]


def squad_file(path: Path) -> Path:
    paragraphs = []
    for p_index, (context, qas) in enumerate(PARAGRAPHS):
        paragraphs.append({"context": context, "qas": [
            {"id": f"{p_index}-{i}", "question": q,
             "answers": [{"text": a, "answer_start": context.index(a)}]}
            for i, (q, a) in enumerate(qas)]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "T",
                                                            "paragraphs": paragraphs}]}))
    return path


def tiny_encoder(folder: Path) -> Path:
    """A 2-layer BERT encoder folder (random weights) with a real fast WordPiece tokenizer."""
    from transformers import BertConfig, BertModel

    text = " ".join(c + " " + " ".join(q + " " + a for q, a in qas) for c, qas in PARAGRAPHS)
    fast = wordpiece_tokenizer(sorted(set(re.findall(r"\w+|[^\w\s]", text.lower()))))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128)
    BertModel(config).save_pretrained(str(folder))
    fast.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    encoder = tiny_encoder(root / "encoder")
    data = squad_file(root / "train.json")
    return encoder, data


def settings(encoder: Path, data: Path, epochs: int) -> TrainSettings:
    # windows of 24 tokens with stride 8 exercise multi-window examples and CLS labels
    return TrainSettings(encoder=str(encoder), train=str(data), dev=str(data), epochs=epochs,
                         max_seq_len=24, stride=8, batch_size=4, lr=3e-3, seed=0)


def test_batches_cover_every_window_once_and_group_lengths():
    lengths = [5 + (i * 37) % 200 for i in range(1000)]
    batches = length_grouped_batches(lengths, 16, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == length_grouped_batches(lengths, 16, seed=3)
    assert batches != length_grouped_batches(lengths, 16, seed=4)
    # grouping: the padding waste is far below that of random batches
    waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                for b in batches)
    assert waste < 0.2 * sum(lengths)


def test_loss_goes_down_and_checkpoints_are_complete(setup, tmp_path):
    encoder, data = setup
    out = tmp_path / "run"
    final = train(settings(encoder, data, epochs=6), out, threads=1, progress=False,
                  log=lambda _: None)
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert 0.0 <= final["dev_f1"] <= 100.0 and "dev_exact_match" in final
    for folder in [out / f"epoch-{n}" for n in range(1, 7)] + [out]:
        assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
        assert (folder / "tokenizer.json").exists()
    assert (out / "epoch-1" / "training_state.pt").exists()
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model = AutoModelForQuestionAnswering.from_pretrained(str(out), local_files_only=True)
    assert model.config.architectures == ["BertForQuestionAnswering"]
    assert AutoTokenizer.from_pretrained(str(out), local_files_only=True).is_fast


def test_resume_continues_exactly_where_the_epoch_ended(setup, tmp_path):
    encoder, data = setup
    straight = tmp_path / "straight"
    train(settings(encoder, data, epochs=2), straight, threads=1, progress=False,
          log=lambda _: None)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "epoch-1", resumed / "epoch-1")  # as if killed in epoch 2
    logs: list[str] = []
    train(settings(encoder, data, epochs=2), resumed, resume=True, threads=1, progress=False,
          log=logs.append)
    assert any("resumed after epoch 1" in line for line in logs)
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    history = json.loads((resumed / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_existing_checkpoints_need_resume(setup, tmp_path):
    encoder, data = setup
    out = tmp_path / "run"
    train(settings(encoder, data, epochs=1), out, threads=1, progress=False, log=lambda _: None)
    with pytest.raises(ShardqaError, match="--resume"):
        train(settings(encoder, data, epochs=1), out, threads=1, progress=False,
              log=lambda _: None)
    changed = TrainSettings(**{**settings(encoder, data, epochs=2).__dict__, "lr": 1e-3})
    with pytest.raises(ShardqaError, match="different settings"):
        train(changed, out, resume=True, threads=1, progress=False, log=lambda _: None)


def test_cli_rejects_a_folder_without_a_model(setup, tmp_path):
    _, data = setup
    result = CliRunner().invoke(train_command, ["--encoder", str(tmp_path), "--train", str(data),
                                                "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, ShardqaError)
    assert result.exception.exit_code == 2
    assert "no config.json" in str(result.exception)


def test_max_steps_ends_the_schedule_inside_an_epoch(setup, tmp_path):
    encoder, data = setup
    out = tmp_path / "run"
    first = TrainSettings(**{**settings(encoder, data, epochs=3).__dict__})
    train(first, out, threads=1, progress=False, log=lambda _: None)  # 3 whole epochs
    per_epoch = json.loads((out / "metrics.json").read_text())["history"][0]["step"]
    assert per_epoch > 2
    short = tmp_path / "short"
    short.mkdir()
    shutil.copytree(out / "epoch-1", short / "epoch-1")
    cut = TrainSettings(**{**first.__dict__, "max_steps": per_epoch + 2})
    logs: list[str] = []
    train(cut, short, resume=True, threads=1, progress=False, log=logs.append)
    assert any("schedule length changed" in line for line in logs)
    history = json.loads((short / "metrics.json").read_text())["history"]
    assert [(h["epoch"], h["step"], h["partial"]) for h in history] == [
        (1, per_epoch, False), (2, per_epoch + 2, True)]
    state = torch.load(short / "epoch-2" / "training_state.pt", weights_only=False)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.0  # decayed to zero at max_steps
    assert not (short / "epoch-3").exists()


def test_init_trains_a_reader_further_in_fp32_with_its_head(setup, tmp_path):
    """``--init``: an fp16-stored QA checkpoint (as the bundled reader) loads in fp32 and
    training starts from its QA head, not a fresh one."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    encoder, data = setup
    torch.manual_seed(7)
    reader = AutoModelForQuestionAnswering.from_pretrained(str(encoder), local_files_only=True)
    start = tmp_path / "reader"
    reader.half().save_pretrained(str(start))
    AutoTokenizer.from_pretrained(str(encoder)).save_pretrained(str(start))
    stored = load_file(str(start / "model.safetensors"))
    assert stored["qa_outputs.weight"].dtype == torch.float16
    out = tmp_path / "run"
    further = TrainSettings(**{**settings(encoder, data, epochs=1).__dict__, "encoder": None,
                               "init": str(start), "lr": 1e-12})
    train(further, out, threads=1, progress=False, log=lambda _: None)
    trained = load_file(str(out / "model.safetensors"))
    assert trained["qa_outputs.weight"].dtype == torch.float32
    torch.testing.assert_close(trained["qa_outputs.weight"],
                               stored["qa_outputs.weight"].float(), rtol=0, atol=1e-6)


def test_init_refuses_an_encoder_and_the_cli_wants_one_start(setup, tmp_path):
    encoder, data = setup
    bare = TrainSettings(**{**settings(encoder, data, epochs=1).__dict__, "encoder": None,
                            "init": str(encoder)})
    with pytest.raises(ShardqaError, match="has no QA head"):
        train(bare, tmp_path / "run", threads=1, progress=False, log=lambda _: None)
    for args in ([], ["--encoder", str(encoder), "--init", str(encoder)]):
        result = CliRunner().invoke(train_command, [*args, "--train", str(data),
                                                    "--out", str(tmp_path / "o")])
        assert isinstance(result.exception, ShardqaError), result.output
        assert "exactly one of --encoder" in str(result.exception)


def test_distillation_loss_is_the_hard_loss_when_the_student_matches_its_teachers():
    from models.distillation import Distillation, distillation_loss

    torch.manual_seed(1)
    start, end = torch.randn(3, 10), torch.randn(3, 10)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    hard = torch.tensor(1.7)
    half = Distillation(("t",), weight=0.5, temperature=2.0)
    same = distillation_loss(start, end, hard, (start.clone(), end.clone()), mask, half)
    torch.testing.assert_close(same, torch.tensor(0.85))
    other = (torch.randn(3, 10), torch.randn(3, 10))
    assert distillation_loss(start, end, hard, other, mask, half) > same
    # the teachers' logits past a window's end (padding) do not count
    padded = (other[0].clone(), other[1].clone())
    padded[0][1, 6:] = 50.0
    torch.testing.assert_close(distillation_loss(start, end, hard, padded, mask, half),
                               distillation_loss(start, end, hard, other, mask, half))
    plain = Distillation(("t",), weight=0.0)
    torch.testing.assert_close(distillation_loss(start, end, hard, other, mask, plain), hard)


def test_distillation_moves_the_student_towards_its_teachers_and_caches_their_logits(
        setup, tmp_path):
    """A reader trained on the data is the teacher of a fresh one trained on soft targets
    only: the student's start distribution ends closer to the teacher's than it began."""
    from transformers import AutoModelForQuestionAnswering

    from models.distillation import CACHE_FILE
    from models.squad import prepare_train_features, read_squad
    from models.train import collate

    encoder, data = setup
    teacher = tmp_path / "teacher"
    train(settings(encoder, data, epochs=4), teacher, threads=1, progress=False,
          log=lambda _: None)
    student = TrainSettings(**{**settings(encoder, data, epochs=3).__dict__,
                               "teachers": (str(teacher),), "distill_weight": 1.0,
                               "distill_temperature": 1.0, "seed": 5})
    out = tmp_path / "student"
    logs: list[str] = []
    train(student, out, threads=1, progress=False, log=logs.append)
    assert any("teachers: 1" in line for line in logs)
    assert (out / CACHE_FILE).exists()

    def start_logits(folder: Path) -> torch.Tensor:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        features = prepare_train_features(read_squad(str(data)), tokenizer, 24, 8)
        batch = collate(features, tokenizer.pad_token_id)
        del batch["start_positions"], batch["end_positions"]
        model = AutoModelForQuestionAnswering.from_pretrained(str(folder),
                                                              local_files_only=True).eval()
        with torch.no_grad():
            return model(**batch).start_logits.masked_fill(batch["attention_mask"] == 0, -1e4)

    def kl(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.nn.functional.kl_div(torch.log_softmax(a, -1),
                                                torch.log_softmax(b, -1), log_target=True,
                                                reduction="batchmean"))

    taught = start_logits(teacher)
    before = start_logits(out / "epoch-1")  # one epoch in
    after = start_logits(out)
    assert kl(after, taught) < kl(before, taught)
    # resume reads the cached logits instead of running the teachers again
    more = TrainSettings(**{**student.__dict__, "epochs": 4})
    (teacher / "model.safetensors").rename(teacher / "gone.safetensors")
    train(more, out, resume=True, threads=1, progress=False, log=lambda _: None)
    assert (out / "epoch-4").exists()
