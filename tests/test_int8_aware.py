"""Quantization-aware training: the simulated rounding is the int8 export's, and the
checkpoint it leaves is a plain one."""

from __future__ import annotations

import copy
import json

import torch
from safetensors.torch import load_file

from models.export import quantize_int8
from models.int8_aware import simulate_int8
from models.train import TrainSettings, train
from tests.test_train import settings, setup  # noqa: F401  (the tiny encoder and data)


def test_the_simulation_rounds_as_the_int8_export_does():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 384), torch.nn.GELU(),
                                torch.nn.Linear(384, 96))
    x = torch.randn(5, 40, 96) * 3
    exact = model(x)
    simulated = copy.deepcopy(model)
    assert simulate_int8(simulated) == ["0", "2"]
    int8 = quantize_int8(model)(x)
    with torch.no_grad():
        rounded = simulated(x)
    error = (int8 - exact).abs().mean()
    assert error > 1e-4  # int8 does change the outputs ...
    assert (rounded - int8).abs().mean() < 0.02 * error  # ... and the simulation as int8 does
    assert simulated.state_dict().keys() == model.state_dict().keys()


def test_the_simulation_passes_gradients_straight_through():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 4)
    simulate_int8(torch.nn.Sequential(layer))
    x = torch.randn(3, 16, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and x.grad is not None
    assert float(layer.weight.grad.abs().sum()) > 0 and float(x.grad.abs().sum()) > 0


def test_int8_aware_training_leaves_a_plain_checkpoint(setup, tmp_path):  # noqa: F811
    from transformers import AutoModelForQuestionAnswering

    encoder, data = setup
    aware = TrainSettings(**{**settings(encoder, data, epochs=2).__dict__, "int8_aware": True})
    logs: list[str] = []
    out = tmp_path / "aware"
    train(aware, out, threads=1, progress=False, log=logs.append)
    assert any("int8-aware: 12 Linear layers" in line for line in logs)  # 2 layers x 6
    history = [h["train_loss"] for h in
               json.loads((out / "metrics.json").read_text())["history"]]
    assert history[1] < history[0]
    stored = load_file(str(out / "model.safetensors"))
    plain = AutoModelForQuestionAnswering.from_pretrained(str(out), local_files_only=True)
    assert set(stored) == set(plain.state_dict())
    assert "forward" not in vars(plain.bert.encoder.layer[0].output.dense)  # loads as plain
