"""The CNN family: a compact image classifier, its training loop, and the frozen feature network for metrics.

Network: cnn_nets.py (three conv-BN-ReLU stages). Training: random shifts (replicate padding + crop) and
horizontal flips drawn from an explicit generator, label smoothing, SGD with Nesterov momentum and a
one-cycle schedule (a pure function of the step). Each epoch's data order is a pure function of
(seed, epoch); the augmentation generator and the global RNG (dropout) travel in checkpoints, so an
interrupted run resumes exactly. Prediction averages the logits of each image and its mirror image when
the model was trained with flips.

On CPU it trains channels_last with bf16 autocast where the CPU has native bf16, and without
torch.compile: each choice was measured (figures in BENCHMARKS.md, "Model engine", kept current there
rather than here, where they would go stale).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from shared.specs import CnnOptions
from worker.engine.cnn_nets import Classifier
from worker.engine.contract import TrainOutput
from worker.engine.images import grid_png, loss_curve_png
from worker.engine.imageset import ImageSet, to_unit_range
from worker.engine.latents import item_seed
from worker.engine.options import given, option_fields, parse_options
from worker.engine.runtime import (
    ConfigError,
    RunContext,
    capture_rng,
    inference_rows,
    pack_checkpoint,
    restore_rng,
    training_autocast,
    unpack_checkpoint,
)

FAMILY = "cnn"
BASE_LR_PER_256 = 0.1  # peak SGD learning rate for a batch of 256; scaled linearly with the batch size
GRID_IMAGES = 64
HISTORY_POINTS = 2000  # the loss history keeps about this many points (means over groups of steps)


@dataclass
class Config(option_fields(CnnOptions, epochs=10, batch_size=128, lr=BASE_LR_PER_256 / 2)):
    """The options (shared/specs.CnnOptions; lr defaults to BASE_LR_PER_256 scaled to the batch size),
    what the data fixes, and what the family fixes."""

    # Derived from the data.
    image_size: int = 28
    channels: int = 1
    num_classes: int = 10
    class_names: list[str] = field(default_factory=list)
    # Internal: not user options.
    val_fraction: float = 0.1  # taken from the training data when no holdout set is given
    weight_decay: float = 5e-4
    momentum: float = 0.9
    dropout: float = 0.1
    warmup_fraction: float = 0.25
    max_shift: int = 2

    @classmethod
    def from_options(cls, options: CnnOptions | dict[str, Any], data: ImageSet) -> Config:
        options = parse_options(CnnOptions, FAMILY, options)
        if data.labels is None or data.num_classes < 2:
            raise ConfigError("data: a cnn needs labelled images of at least two classes")
        if data.channels not in (1, 3) or data.images.shape[-2] != data.size:
            raise ConfigError("data: a cnn needs square 1- or 3-channel images")
        config = cls(
            **given(options), image_size=data.size, channels=data.channels, num_classes=data.num_classes,
            class_names=list(data.class_names),
        )  # fmt: skip
        if options.lr is None:
            config.lr = BASE_LR_PER_256 * config.batch_size / 256
        return config

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------
# Inference


def build_model(config: Config) -> Classifier:
    return Classifier(
        config.channels, config.num_classes, config.width, config.image_size, config.dropout,
        flip_average=config.augment,
    )  # fmt: skip


def _batched(model: Classifier, images: torch.Tensor, fn: Any) -> torch.Tensor:
    device = next(model.parameters()).device
    outputs, rows = [], inference_rows(device)
    with torch.inference_mode(), _autocast(device):
        for start in range(0, len(images), rows):
            x = images[start : start + rows].to(device).contiguous(memory_format=torch.channels_last)
            outputs.append(fn(x).float())
    return torch.cat(outputs).to(images.device) if outputs else torch.empty(0)


def classify(model: Classifier, images: torch.Tensor) -> torch.Tensor:
    """Logits (B, K) for images (B, C, S, S) in [-1, 1]."""
    if model.flip_average:
        return _batched(model, images, lambda x: (model(x) + model(x.flip(-1))) / 2)
    return _batched(model, images, model)


def features(model: Classifier, images: torch.Tensor) -> torch.Tensor:
    """Penultimate features (B, 4w) of images (B, C, S, S) in [-1, 1]: the feature network for metrics."""
    return _batched(model, images, model.features)


def _autocast(device: torch.device) -> Any:
    # bf16 on CUDA; float32 on CPU (CPU autocast would change results between machines).
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


# ---------------------------------------------------------------------------------------------------
# Training


def learning_rate(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    """One cycle: cosine warm-up from peak/10 to peak, then cosine annealing to peak/1000."""
    warmup = max(1, round(total * warmup_fraction))
    if step < warmup:
        return peak / 10 + (peak - peak / 10) * (1 - math.cos(math.pi * step / warmup)) / 2
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak / 1000 + (peak - peak / 1000) * (1 + math.cos(math.pi * progress)) / 2


def schedule_step(step: int, total: int, ctx: RunContext) -> int:
    """Where the one-cycle schedule stands. With a time budget that runs out before `total` steps, the
    schedule follows the spent fraction of the budget, so a budget-limited run still anneals instead of
    stopping at its peak learning rate (such a run's length, and so its weights, depend on the machine)."""
    if not ctx.max_seconds:
        return step
    return max(step, min(total, round(total * ctx.elapsed() / ctx.max_seconds)))


def augment_batch(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to max_shift px (edge pixels repeated) and horizontal flips, per image.
    images: (B, C, S, S) float; the draws come from `generator` (on the CPU) alone. No random erasing:
    it measured worse (BENCHMARKS.md, "Quality")."""
    b, _, h, w = images.shape
    shift = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator).to(images.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(images.device)
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    rows = (shift[0, :, None] + torch.arange(h, device=images.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (shift[1, :, None] + torch.arange(w, device=images.device))[:, None, None, :]  # (B, 1, 1, W)
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(item_seed(seed, epoch)))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No weight decay on BatchNorm scales and biases.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def accuracy_report(
    model: Classifier, data: ImageSet, class_names: list[str]
) -> tuple[dict[str, Any], torch.Tensor]:
    """(test_accuracy, per-class accuracy, confusion matrix, count) on labelled `data`; the predictions."""
    model.eval()
    chunks = data.images.split(inference_rows(next(model.parameters()).device))
    predictions = torch.cat(
        [classify(model, to_unit_range(c)).argmax(1).cpu() for c in chunks] or [torch.empty(0)]
    )
    predictions = predictions.long()
    assert data.labels is not None
    k = len(class_names)
    confusion = torch.bincount(data.labels * k + predictions, minlength=k * k).view(k, k)
    per_class = confusion.diag().double() / confusion.sum(1).clamp(min=1).double()
    metrics = {
        "test_accuracy": float((predictions == data.labels).double().mean()) if len(data) else 0.0,
        "per_class_accuracy": {name: float(per_class[i]) for i, name in enumerate(class_names)},
        "confusion_matrix": confusion.tolist(),  # rows: true class, columns: predicted class
        "num_evaluated": len(data),
    }
    return metrics, predictions


def _grid_with_mistakes(images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor) -> bytes:
    """The first 64 evaluation images as RGB, a red frame around each misclassified one."""
    rgb = (
        images[:GRID_IMAGES].expand(-1, 3, -1, -1).clone()
        if images.shape[1] == 1
        else images[:GRID_IMAGES].clone()
    )
    wrong = (labels[:GRID_IMAGES] != predictions[:GRID_IMAGES]).nonzero().flatten()
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1)
    for i in wrong.tolist():
        for edge in (rgb[i, :, 0, :], rgb[i, :, -1, :], rgb[i, :, :, 0], rgb[i, :, :, -1]):
            edge.copy_(red.expand_as(edge))
    return grid_png(rgb, nrow=8)


def _compress_history(values: list[float]) -> tuple[list[float], list[int]]:
    """Means over groups of consecutive steps, and the last step of each group (steps count from 1)."""
    group = max(1, math.ceil(len(values) / HISTORY_POINTS))
    starts = range(0, len(values), group)
    means = [sum(values[i : i + group]) / len(values[i : i + group]) for i in starts]
    return means, [min(i + group, len(values)) for i in starts]


def _loss_curve(losses: list[float], resumed_at: list[int]) -> bytes:
    means, steps = _compress_history(losses)
    return loss_curve_png(
        {"loss": means}, steps=steps, resumed_at=resumed_at, y_label="cross-entropy (mean per step group)"
    )


def train(config: Config, data: ImageSet, ctx: RunContext, holdout: ImageSet | None = None) -> TrainOutput:
    """Train on `data` (all of it when `holdout` is given, else all but a validation split) and report
    accuracy, per-class accuracy and the confusion matrix on `holdout` or the validation split."""
    from worker.engine.data import split_train_val  # data imports PIL; keep the family import light

    torch.manual_seed(config.seed)
    device = ctx.device
    if holdout is None:
        train_set, eval_set = split_train_val(data, config.val_fraction, config.seed)
    else:
        train_set, eval_set = data, holdout
    model = build_model(config).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        _param_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum, nesterov=True
    )
    augment_generator = torch.Generator().manual_seed(item_seed(config.seed, -1))
    batch = min(config.batch_size, len(train_set))
    steps_per_epoch = max(1, len(train_set) // batch)  # full batches only: BatchNorm sees equal batches
    total = config.max_steps or config.epochs * steps_per_epoch
    step, history = 0, {"loss": []}
    resumed_at: list[int] = []  # steps where training picked up after an interruption (the curve marks them)
    if ctx.resume_from is not None:
        state = unpack_checkpoint(ctx.resume_from, map_location=device)
        if state.get("family") != FAMILY:
            raise ConfigError(f"resume: checkpoint is a {state.get('family')} model, not {FAMILY}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], augment_generator)
        step, history, ctx.elapsed_before = state["step"], state["history"], state["elapsed"]
        resumed_at = [*state.get("resumed_at", []), step]

    def make_checkpoint(final: bool = False) -> bytes:
        return pack_checkpoint({
            "family": FAMILY, "config": config.to_dict(), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "step": step, "rng": capture_rng(augment_generator),
            "history": history, "resumed_at": resumed_at, "elapsed": ctx.elapsed(), "final": final,
        })  # fmt: skip

    images_uint8, labels_all = train_set.images, train_set.labels
    assert labels_all is not None
    model.train()
    autocast = training_autocast(device, ctx.mixed_precision)  # probes the hardware once, not per step
    tick = time.perf_counter()
    while step < total:
        epoch, position = divmod(step, steps_per_epoch)
        index = epoch_order(config.seed, epoch, len(train_set))[position * batch : (position + 1) * batch]
        x = to_unit_range(images_uint8[index].to(device))
        if config.augment:
            x = augment_batch(x, config.max_shift, augment_generator)
        x = x.contiguous(memory_format=torch.channels_last)
        lr = learning_rate(schedule_step(step, total, ctx), total, config.lr, config.warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            loss = F.cross_entropy(
                model(x), labels_all[index].to(device), label_smoothing=config.label_smoothing
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_value = float(loss.detach())
        history["loss"].append(loss_value)
        now = time.perf_counter()
        rate, tick = batch / max(now - tick, 1e-9), now
        if ctx.step_done(step, total, make_checkpoint, loss=loss_value, samples_per_sec=rate):
            break

    metrics, predictions = accuracy_report(model, eval_set, config.class_names)
    metrics.update(
        evaluated_on="holdout" if holdout is not None else "validation",
        steps=step, epochs=round(step / steps_per_epoch, 3), train_seconds=round(ctx.elapsed(), 1),
        final_loss=history["loss"][-1] if history["loss"] else None,
    )  # fmt: skip
    assert eval_set.labels is not None
    return TrainOutput(
        checkpoint=make_checkpoint(final=True),
        metrics=metrics,
        sample_grid_png=_grid_with_mistakes(eval_set.images, eval_set.labels, predictions),
        loss_curve_png=_loss_curve(history["loss"], resumed_at),
    )


def load(state: dict[str, Any], device: torch.device) -> Classifier:
    """The trained classifier in eval mode from an unpacked checkpoint."""
    model = build_model(Config.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    return model.to(device).to(memory_format=torch.channels_last).eval()
