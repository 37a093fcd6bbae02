"""The int8 variant's fp32 layers: the export setting, its default beside the checkpoint, and
the selection that chooses it (real TorchScript exports of the tiny BERT reader)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from models.export import INT8_CHOICE, ExportError, export, read_metadata
from tests.conftest import run_cli

KEPT = "bert.encoder.layer.1.output.dense"
OTHER = "bert.encoder.layer.0.attention.self.query"


def _submodule(module, dotted: str):
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _int8_module(artifact):
    meta = read_metadata(artifact)
    return torch.jit.load(str(artifact / meta["variants"]["int8"]["file"])), meta


@pytest.fixture()
def checkpoint(tiny_checkpoint, tmp_path):
    """A copy of the tiny checkpoint this test may write a choice into."""
    return shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")


def test_export_keeps_the_named_layers_fp32(checkpoint, tmp_path):
    module, meta = _int8_module(export(checkpoint, "t", tmp_path / "a", int8=True,
                                       int8_keep_fp32=[KEPT]))
    assert meta["int8_fp32_layers"] == [KEPT]
    assert _submodule(module, "model." + KEPT).original_name == "Linear"
    assert _submodule(module, "model." + OTHER).original_name == "Int8Linear"
    assert meta["parity"]["fp32"]["max_abs_diff"] <= 1e-4  # the fp32 gate still runs


def test_default_is_the_checkpoints_choice_and_can_be_overridden(checkpoint, tmp_path):
    (checkpoint / INT8_CHOICE).write_text(json.dumps({"keep_fp32": [KEPT]}))
    module, meta = _int8_module(export(checkpoint, "t", tmp_path / "a", int8=True))
    assert meta["int8_fp32_layers"] == [KEPT]
    assert _submodule(module, "model." + KEPT).original_name == "Linear"
    done = run_cli("model", "export", str(checkpoint), "--name", "t", "--out",
                   str(tmp_path / "b"), "--int8", "--int8-keep-fp32", "none")
    assert done.returncode == 0, done.stdout + done.stderr
    module, meta = _int8_module(tmp_path / "b")
    assert meta["int8_fp32_layers"] == []
    assert _submodule(module, "model." + KEPT).original_name == "Int8Linear"


def test_unknown_layer_or_bad_choice_file_is_refused(checkpoint, tmp_path):
    with pytest.raises(ExportError, match="no quantized Linear layer named nope"):
        export(checkpoint, "t", tmp_path / "a", int8=True, int8_keep_fp32=["nope"])
    bad = run_cli("model", "export", str(checkpoint), "--name", "t", "--out",
                  str(tmp_path / "b"), "--int8", "--int8-keep-fp32", "qa_outputs")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "no quantized Linear layer named qa_outputs" in bad.stdout + bad.stderr
    (checkpoint / INT8_CHOICE).write_text("[1, 2]")
    with pytest.raises(ExportError, match="not a shardqa int8 choice"):
        export(checkpoint, "t", tmp_path / "c", int8=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_ranking_and_divergence(checkpoint):
    """Keeping every layer fp32 removes all divergence; the ranking covers every layer."""
    from models.export import QAOutputs, _load, int8_candidates, quantize_int8
    from models.int8_selection import divergence, log_probs, rank_layers, sample_batches
    from models.squad import read_squad
    from shardqa.datasets import SQUAD_DEV

    model, tokenizer, _ = _load(str(checkpoint), True)
    with torch.no_grad():  # random weights give flat logits (KL ~ float noise): sharpen
        model.qa_outputs.weight.mul_(100)
    batches = sample_batches(tokenizer, read_squad(SQUAD_DEV)[:6])
    reference = log_probs(QAOutputs(model, True), batches)
    names = int8_candidates(model)
    assert divergence(reference, QAOutputs(quantize_int8(model, names), True), batches) == 0
    int8 = QAOutputs(quantize_int8(model), True)
    assert divergence(reference, int8, batches) > 2e-7  # float noise: ~2e-8
    ranking = rank_layers(model, True, batches, lambda _m: None)
    assert sorted(n for n, _ in ranking) == sorted(names)
    assert [g for _, g in ranking] == sorted((g for _, g in ranking), reverse=True)


def test_int8_select_command_writes_the_choice(checkpoint, tmp_path):
    from shardqa.datasets import SQUAD_DEV

    data = json.loads(SQUAD_DEV.read_text())
    paragraph = data["data"][0]["paragraphs"][0]
    small = tmp_path / "dev.json"
    small.write_text(json.dumps({"version": "1.1", "data": [
        {"title": "t", "paragraphs": [{**paragraph, "qas": paragraph["qas"][:3]}]}]}))
    done = run_cli("model", "int8-select", str(checkpoint), "--dev", str(small),
                   "--budget", "100", "--sample", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((checkpoint / INT8_CHOICE).read_text())
    assert record["reached"] and record["keep_fp32"] == [] and record["questions"] == 3
    assert len(record["ranking"]) == 12 and record["steps"][0]["keep_fp32"] == []
    _module, meta = _int8_module(export(checkpoint, "t", tmp_path / "a", int8=True))
    assert meta["int8_fp32_layers"] == []


def test_greedy_keeps_only_layers_that_raise_f1():
    """A layer whose fp32 copy lowers F1 is dropped, and the search goes on from the best set."""
    from models.int8_selection import greedy

    gains = {"a": 0.4, "b": -0.3, "c": 0.5}
    steps = greedy(["a", "b", "c"], fp32=70.0, budget=0.2,
                   score=lambda keep: 69.0 + sum(gains[n] for n in keep))
    assert [(st["keep_fp32"], st["kept"]) for st in steps] == [
        ([], True), (["a"], True), (["a", "b"], False), (["a", "c"], True)]
    assert steps[-1]["f1"] == pytest.approx(69.9)  # within 0.2 of fp32: stopped there
