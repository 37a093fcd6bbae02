"""Distillation: train a reader towards the mean start/end logits of other readers (teachers).

Why: shardqa can only train on the 8,468 SQuAD questions it ships, and more epochs over them
over-fit. The mean logits of several checkpoints of the same reader score higher on dev than
any one of them (or their weight average), and a single reader trained towards that mean keeps
part of the gain at a single reader's cost. The teachers' logits are computed once per run
over the training windows and cached beside the checkpoints, so ``--resume`` does not pay again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.squad import TrainFeature

if TYPE_CHECKING:
    import torch

CACHE_FILE = "teacher-logits.pt"
#: a logit no window position can beat: padding is left out of both softmaxes
_MASKED = -1e4


@dataclass(frozen=True)
class Distillation:
    """How much the soft targets count and how soft they are (Hinton et al.'s T)."""

    teachers: tuple[str, ...]
    weight: float = 0.5  # the soft loss's share; the rest is the usual start/end cross-entropy
    temperature: float = 2.0


@dataclass
class TeacherLogits:
    """The teachers' mean start and end logits of each training window (fp16, unpadded)."""

    start: list[torch.Tensor]
    end: list[torch.Tensor]

    def batch(self, ids: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This batch's soft targets, padded to ``width`` with a masked logit."""
        import torch

        start = torch.full((len(ids), width), _MASKED)
        end = torch.full((len(ids), width), _MASKED)
        for row, i in enumerate(ids):
            size = self.start[i].shape[0]
            start[row, :size] = self.start[i].float()
            end[row, :size] = self.end[i].float()
        return start, end


def teacher_logits(teachers: tuple[str, ...], features: list[TrainFeature], pad_id: int,
                   key: dict, cache_dir: Path, progress: bool = True) -> TeacherLogits:
    """The mean logits of ``teachers`` over ``features``: from the cache when it was made for
    the same teachers and windows (``key``), else computed (eager fp32, no grad) and cached."""
    import torch

    cache = cache_dir / CACHE_FILE
    key = {**key, "teachers": list(teachers), "windows": len(features)}
    if cache.exists():
        stored = torch.load(cache, weights_only=False)
        if stored["key"] == key:
            return TeacherLogits(stored["start"], stored["end"])
    sums = [(torch.zeros(len(f.input_ids)), torch.zeros(len(f.input_ids))) for f in features]
    for teacher in teachers:
        _add_logits(teacher, features, pad_id, sums, progress)
    n = len(teachers)
    logits = TeacherLogits([(s / n).half() for s, _ in sums], [(e / n).half() for _, e in sums])
    torch.save({"key": key, "start": logits.start, "end": logits.end}, cache)
    return logits


def _add_logits(teacher: str, features: list[TrainFeature], pad_id: int,
                sums: list[tuple[torch.Tensor, torch.Tensor]], progress: bool) -> None:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForQuestionAnswering

    from models.train import _bar_interval, batched_logits

    model = AutoModelForQuestionAnswering.from_pretrained(
        teacher, local_files_only=True, dtype=torch.float32)
    bar = tqdm(total=len(features), desc=f"teacher {Path(teacher).name}", unit="win",
               disable=not progress, mininterval=_bar_interval(), file=sys.stderr)
    for ids, out in batched_logits(model, features, pad_id):
        for row, i in enumerate(ids):
            size = len(features[i].input_ids)
            sums[i][0].add_(out.start_logits[row, :size])
            sums[i][1].add_(out.end_logits[row, :size])
        bar.update(len(ids))
    bar.close()


def distillation_loss(start: torch.Tensor, end: torch.Tensor, hard_loss: torch.Tensor,
                      soft: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
                      settings: Distillation) -> torch.Tensor:
    """(1 - weight) x the usual loss + weight x T^2 x KL(teacher || student) at temperature T,
    over the window's real tokens, start and end averaged as the usual loss averages them."""
    import torch

    t = settings.temperature
    keep = mask.bool()

    def kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s = torch.log_softmax(student.masked_fill(~keep, _MASKED) / t, dim=-1)
        p = torch.log_softmax(teacher.masked_fill(~keep, _MASKED) / t, dim=-1)
        return torch.nn.functional.kl_div(s, p, log_target=True, reduction="batchmean")

    soft_loss = (kl(start, soft[0]) + kl(end, soft[1])) / 2 * t * t
    return settings.weight * soft_loss + (1 - settings.weight) * hard_loss
