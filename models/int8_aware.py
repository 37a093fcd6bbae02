"""Quantization-aware training: the reader learns with int8's rounding in the loop.

Why: the int8 export (``models/export.py: Int8Linear``) rounds each Linear's input to 8 bits
per call and its weights to 7 bits per output channel, and a reader trained in fp32 loses
about 1 F1 to that. Training with the same rounding simulated (straight-through gradients)
lets the weights settle where the rounding costs less. Only the forward pass changes: the
module keeps its class's state dict, so the checkpoint is a plain one that every variant
(fp32, bf16, int8) exports from as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Int8Linear's ranges: activations as unsigned 8 bits per call, weights as signed 7 bits
ACTIVATION_RANGE = (0, 255)
WEIGHT_RANGE = (-64, 63)


def fake_int8_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded as dynamic quantization rounds it: one affine 8-bit grid over the whole
    tensor's range (0 included), gradients passed straight through."""
    import torch

    lo, hi = ACTIVATION_RANGE
    detached = x.detach()
    x_min = torch.clamp(detached.min(), max=0.0)
    x_max = torch.clamp(detached.max(), min=0.0)
    scale = torch.clamp((x_max - x_min) / (hi - lo), min=1e-8).float()
    zero_point = torch.clamp(torch.round(lo - x_min / scale), lo, hi).int()
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, lo, hi)


def fake_int8_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to the export's symmetric per-output-channel 7-bit grid."""
    import torch

    lo, hi = WEIGHT_RANGE
    scale = torch.clamp(weight.detach().abs().amax(dim=1) / ((hi - lo) / 2), min=1e-8).float()
    zero_point = torch.zeros(weight.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, lo, hi)


def _fake_int8_forward(self, x):
    import torch

    return torch.nn.functional.linear(fake_int8_input(x), fake_int8_weight(self.weight),
                                      self.bias)


def simulate_int8(model: torch.nn.Module) -> list[str]:
    """Make every Linear the int8 export quantizes compute with int8 rounding from now on;
    the names of those layers. The weights and the state dict stay as they are."""
    from types import MethodType

    from models.export import int8_candidates

    names = int8_candidates(model)
    modules = dict(model.named_modules())
    for name in names:
        modules[name].forward = MethodType(_fake_int8_forward, modules[name])
    return names
