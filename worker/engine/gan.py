"""The GAN family: configuration, training, sampling and loading.

Hinge loss, a spectrally normalised (projection) discriminator, an exponential moving average of the
generator's weights (what users sample from), optional DiffAugment for small data sets. Deterministic
on CPU and exact across interruptions: every random draw comes from generators whose state the
checkpoint carries, and each epoch's data order is a pure function of (seed, epoch).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from shared.specs import GanOptions
from worker.engine.augment import AdaptiveProbability, diff_augment, overfitting
from worker.engine.contract import TrainOutput
from worker.engine.gan_nets import Discriminator, Generator
from worker.engine.images import grid_png
from worker.engine.imageset import ImageSet, to_uint8, to_unit_range
from worker.engine.latents import in_fixed_blocks, item_seed, latents_for_seeds, sample_grid_plan
from worker.engine.loss_history import LossHistory
from worker.engine.options import (
    check_generative_data,
    given,
    option_fields,
    parse_options,
    resolve_conditional,
)
from worker.engine.runtime import (
    ConfigError,
    RunContext,
    capture_rng,
    pack_checkpoint,
    restore_rng,
    training_autocast,
    unpack_checkpoint,
)
from worker.engine.steps import StepBudget, batch_indices

FAMILY = "gan"


@dataclass
class Config(option_fields(GanOptions, batch_size=64, lr=2e-4), StepBudget):
    """The options (shared/specs.GanOptions; neither epochs nor max_steps: default_steps; lr_d None: lr;
    conditional None: when the data has labels; diff_augment None: adaptive, see augment.py), what the
    data fixes, and what the family fixes."""

    # Derived from the data.
    image_size: int = 28
    channels: int = 1
    num_classes: int = 0  # classes the model is conditioned on; 0 when unconditional
    class_names: list[str] = field(default_factory=list)
    # Internal: not user options.
    default_steps: int = 5000  # a few minutes at 28x28 on 2 CPU cores (BENCHMARKS.md, "Model engine")
    betas: tuple[float, float] = (0.0, 0.9)  # measured better than (0.5, 0.999) here
    class_loss_weight: float = 0.5  # conditional: auxiliary classification loss (see gan_nets)
    upsample: str = "transposed"  # the generator's doubling stages (gan_nets.upsampling_stage)

    @classmethod
    def from_options(cls, options: GanOptions | dict[str, Any], data: ImageSet) -> Config:
        options = parse_options(GanOptions, FAMILY, options)
        check_generative_data(data, FAMILY)
        conditional = resolve_conditional(options.conditional, data)
        return cls(
            **{**given(options), "conditional": conditional},
            image_size=data.size,
            channels=data.channels,
            num_classes=data.num_classes if conditional else 0,
            class_names=list(data.class_names),
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in names}
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)  # checkpoints from before `upsample` existed take its default

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values


# ---------------------------------------------------------------------------------------------------
# Losses and small pieces


def hinge_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    return torch.relu(1.0 - real_scores).mean() + torch.relu(1.0 + fake_scores).mean()


def hinge_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.mean()


def build_generator(config: Config) -> Generator:
    return Generator(
        config.latent_dim,
        config.width,
        config.image_size,
        config.channels,
        config.num_classes,
        config.upsample,
    )


def build_discriminator(config: Config) -> Discriminator:
    return Discriminator(config.width, config.image_size, config.channels, config.num_classes)


@torch.no_grad()
def update_ema(ema: Generator, generator: Generator, decay: float) -> None:
    for target, source in zip(ema.parameters(), generator.parameters(), strict=True):
        target.lerp_(source, 1.0 - decay)
    for target, source in zip(ema.buffers(), generator.buffers(), strict=True):
        target.copy_(source)


def ema_decay_at(step: int, ema_decay: float) -> float:
    """Warm-up: early on the average follows the weights closely instead of remembering the init."""
    return min(ema_decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def standing_stats_state(ema: Generator, seed: int, batches: int = 8, batch_size: int = 64) -> dict[str, Any]:
    """The EMA generator's weights with BatchNorm statistics recomputed for *its* activations.

    The copied running statistics describe the raw generator; sampling in eval mode from the averaged
    weights is sharper with statistics measured on the averaged network itself."""
    generator = copy.deepcopy(ema).train()
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    device = next(generator.parameters()).device
    for b in range(batches):
        seeds = [item_seed(seed, b * batch_size + i) for i in range(batch_size)]
        labels = torch.tensor(seeds) % max(generator.num_classes, 1)
        generator(latents_for_seeds(seeds, generator.latent_dim).to(device), generator.class_vectors(labels))
    for norm in norms:
        norm.momentum = 0.1
    return generator.state_dict()


# ---------------------------------------------------------------------------------------------------
# Sampling and loading


@torch.no_grad()
def sample(
    model: Generator,
    seeds: Sequence[int],
    labels: Sequence[int] | None,
    *,
    truncation: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(B, C, H, W) float in [-1, 1]; item i depends only on seeds[i] and labels[i], bit for bit.

    Eval-mode BatchNorm and float32 alone are not enough: every forward pass runs on a fixed-size block
    (latents.in_fixed_blocks). A conditional model given no labels uses label seed % num_classes."""
    device = next(model.parameters()).device
    z = latents_for_seeds(seeds, model.latent_dim, truncation) * temperature
    y = None
    if model.num_classes:
        if labels is None:
            label_tensor = torch.tensor([int(s) % model.num_classes for s in seeds], dtype=torch.long)
        else:
            label_tensor = torch.as_tensor(list(labels), dtype=torch.long).reshape(-1)
            if len(label_tensor) != len(seeds):
                raise ConfigError(f"labels: {len(label_tensor)} given for {len(seeds)} seeds")
            if len(label_tensor) and (label_tensor.min() < 0 or label_tensor.max() >= model.num_classes):
                raise ConfigError(f"labels: must be in [0, {model.num_classes})")
        y = model.class_vectors(label_tensor)
    was_training = model.training
    model.eval()
    try:
        z = z.to(device)
        if not len(z):
            return torch.empty(0, model.channels, model.image_size, model.image_size, device=device)
        return in_fixed_blocks(model, z, y).float().clamp(-1.0, 1.0)
    finally:
        model.train(was_training)


def load(state: dict[str, Any], device: torch.device) -> Generator:
    """The EMA generator of a checkpoint, in eval mode on `device`."""
    generator = build_generator(Config.from_dict(state["config"]))
    generator.load_state_dict(state["model"])
    return generator.to(device).eval()


# ---------------------------------------------------------------------------------------------------
# Training


def train(config: Config, data: ImageSet, ctx: RunContext, holdout: ImageSet | None = None) -> TrainOutput:
    """Train for config.total_steps (or until the time budget is spent); `holdout` is unused here
    (sample quality is measured by the evaluation module)."""
    torch.manual_seed(config.seed)
    device = ctx.device
    cuda = device.type == "cuda"
    generator, discriminator = build_generator(config).to(device), build_discriminator(config).to(device)
    if cuda:
        generator, discriminator = (
            m.to(memory_format=torch.channels_last) for m in (generator, discriminator)
        )
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr_d or config.lr, betas=config.betas)
    noise = torch.Generator().manual_seed(config.seed)  # latents and augmentation, drawn on CPU
    images = data.images.to(device)  # uint8: 47 MB for Fashion-MNIST
    labels = data.labels.to(device) if config.num_classes and data.labels is not None else None
    total = config.total_steps(len(data))
    history = LossHistory(("loss_g", "loss_d"), total)  # moving averages for metrics and the curve
    ada = AdaptiveProbability(1.0 if config.diff_augment else 0.0)  # only moves when diff_augment is None
    step = 0

    if ctx.resume_from is not None:
        state = unpack_checkpoint(ctx.resume_from, device)
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        ema.load_state_dict(state["ema"])
        opt_g.load_state_dict(state["optimizer"]["g"])
        opt_d.load_state_dict(state["optimizer"]["d"])
        restore_rng(state["rng"], noise)
        step = state["step"]
        history.load_state_dict(state["history"])
        history.resumed(step)
        ada.p = state["augment_p"]
        ctx.elapsed_before = state["elapsed"]

    def make_checkpoint() -> bytes:
        return pack_checkpoint(
            {
                "family": FAMILY,
                "config": config.to_dict(),
                "model": standing_stats_state(ema, config.seed),
                "generator": generator.state_dict(),
                "discriminator": discriminator.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": {"g": opt_g.state_dict(), "d": opt_d.state_dict()},
                "step": step,
                "rng": capture_rng(noise),
                "history": history.state_dict(),
                "augment_p": ada.p,
                "elapsed": ctx.elapsed(),
                "data_shape": list(data.images.shape[1:]),
            }
        )

    def augment(x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, noise, ada.p)

    started, steps_here = time.monotonic(), 0
    autocast = training_autocast(device, ctx.mixed_precision)
    while step < total:
        index = batch_indices(config.seed, step, config.batch_size, len(data)).to(device)
        real = to_unit_range(images[index])
        y_labels = labels[index] if labels is not None else None
        z = torch.randn(config.batch_size, config.latent_dim, generator=noise).to(device)
        with autocast:
            # One generator pass serves both updates (as in the DCGAN reference): the discriminator
            # learns on it detached, then the generator learns through the updated discriminator.
            fake = generator(z, generator.class_vectors(y_labels) if y_labels is not None else None)
            both_labels = torch.cat([y_labels, y_labels]) if y_labels is not None else None
            scores, logits = discriminator.scores_and_logits(
                augment(torch.cat([real, fake.detach()])), both_labels
            )
            loss_d = hinge_d_loss(scores[: len(real)].float(), scores[len(real) :].float())
            real_sign = overfitting(scores[: len(real)])
            if config.diff_augment is None:
                ada.update(scores[: len(real)])
            if logits is not None:  # the class head learns from real images only
                loss_d = loss_d + config.class_loss_weight * F.cross_entropy(
                    logits[: len(real)].float(), y_labels
                )
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        discriminator.requires_grad_(False)
        with autocast:
            scores, logits = discriminator.scores_and_logits(augment(fake), y_labels)
            loss_g = hinge_g_loss(scores.float())
            if logits is not None:
                loss_g = loss_g + config.class_loss_weight * F.cross_entropy(logits.float(), y_labels)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        discriminator.requires_grad_(True)
        update_ema(ema, generator, ema_decay_at(step, config.ema_decay))

        step += 1
        steps_here += 1
        history.update(step, {"loss_g": loss_g.item(), "loss_d": loss_d.item()})
        rate = steps_here * config.batch_size / max(time.monotonic() - started, 1e-9)
        stop = ctx.step_done(
            step, total, make_checkpoint, loss_g=loss_g.item(), loss_d=loss_d.item(), samples_per_sec=rate,
            augment_p=ada.p, real_sign=real_sign,
        )  # fmt: skip
        if stop:
            break

    final = make_checkpoint()
    model = load(unpack_checkpoint(final, device), device)
    seeds, grid_labels, row_names = sample_grid_plan(config.num_classes, config.class_names)
    grid_png_bytes = grid_png(to_uint8(sample(model, seeds, grid_labels)).cpu(), 8, row_labels=row_names)
    averages = history.averages()
    metrics = {
        "steps": step,
        "images_seen": step * config.batch_size,
        "loss_g": averages["loss_g"],
        "loss_d": averages["loss_d"],
        "conditional": bool(config.num_classes),
        "augment_p": ada.p,
        "samples_per_sec": steps_here * config.batch_size / max(time.monotonic() - started, 1e-9),
        "seconds": ctx.elapsed(),
    }
    return TrainOutput(final, metrics, grid_png_bytes, history.png("hinge loss (moving average)"))
