"""The VAE family: configuration, training, sampling, loading and the negative ELBO.

A convolutional VAE (vae_nets) with a discretised-logistic likelihood by default (vae_loss), a linear KL
warm-up so early training learns to reconstruct before the prior pulls the posteriors together, Adam with
a cosine schedule. After training the checkpoint also carries statistics of the training latents: the
mean latent of each class (attribute edits) and, when asked, a fitted Gaussian mixture prior (sampling).
Deterministic on CPU and exact across interruptions: each step's batch is a pure function of (seed, step)
and the only other random draws come from a generator whose state the checkpoint carries.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from shared.specs import VaeOptions
from worker.engine.contract import TrainOutput
from worker.engine.images import grid_png
from worker.engine.imageset import ImageSet, to_uint8, to_unit_range
from worker.engine.latents import item_seed, sample_grid_plan
from worker.engine.loss_history import LossHistory
from worker.engine.mixture_prior import MixturePrior, fit_mixture
from worker.engine.options import (
    check_generative_data,
    given,
    option_fields,
    parse_options,
    resolve_conditional,
)
from worker.engine.runtime import (
    RunContext,
    capture_rng,
    pack_checkpoint,
    restore_rng,
    training_autocast,
    unpack_checkpoint,
)
from worker.engine.steps import StepBudget, batch_indices
from worker.engine.vae_inference import (
    class_means,
    elbo_terms,
    encode_means,
    likelihood_params,
    negative_elbo,
    sample,
)
from worker.engine.vae_loss import gaussian_kl, kl_beta, reconstruction_nll, reparameterise
from worker.engine.vae_nets import VAE

FAMILY = "vae"
__all__ = ["Config", "load", "negative_elbo", "sample", "train"]


@dataclass
class Config(option_fields(VaeOptions, batch_size=64, lr=1e-3), StepBudget):
    """The options (shared/specs.VaeOptions; neither epochs nor max_steps: default_steps; conditional
    None: when the data has labels; kl_warmup_steps is capped at half the run, so the end of training
    optimises the true ELBO), what the data fixes, and what the family fixes."""

    # Derived from the data.
    image_size: int = 28
    channels: int = 1
    num_classes: int = 0  # classes the model is conditioned on; 0 when unconditional
    class_names: list[str] = field(default_factory=list)  # the data's classes, conditioned on or not
    # Internal: not user options.
    default_steps: int = 3000
    lr_warmup_steps: int = 100
    min_lr_fraction: float = 0.05  # the cosine schedule ends at lr * this
    validation_fraction: float = 0.1  # held out of `data` when no holdout is given (at most 5000)
    stats_images: int = 10_000  # training images encoded for the latent statistics
    eval_images: int = 10_000  # images the final metrics are measured on

    @classmethod
    def from_options(cls, options: VaeOptions | dict[str, Any], data: ImageSet) -> Config:
        options = parse_options(VaeOptions, FAMILY, options)
        check_generative_data(data, FAMILY)
        conditional = resolve_conditional(options.conditional, data)
        return cls(
            **{**given(options), "conditional": conditional},
            image_size=data.size,
            channels=data.channels,
            num_classes=data.num_classes if conditional else 0,
            class_names=list(data.class_names) if data.labels is not None else [],
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_model(config: Config) -> VAE:
    return VAE(
        config.image_size,
        config.channels,
        config.width,
        config.latent_dim,
        config.num_classes,
        config.likelihood,
    )


def cosine_lr(step: int, total: int, base: float, warmup: int, min_fraction: float) -> float:
    """Linear warm-up, then cosine decay from base to base * min_fraction at the last step."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (min_fraction + (1.0 - min_fraction) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def split_for_metrics(
    data: ImageSet, holdout: ImageSet | None, config: Config
) -> tuple[ImageSet, ImageSet, str]:
    """(training images, images the final metrics use, their name). With no holdout, a deterministic
    validation split (seeded by config.seed) is held out of `data` when it is big enough."""
    if holdout is not None and len(holdout):
        return data, holdout, "holdout"
    count = min(5000, int(len(data) * config.validation_fraction))
    if count < 1 or len(data) - count < 2:
        return data, data, "train"
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(item_seed(config.seed, -1)))
    return data.subset(order[count:]), data.subset(order[:count]), "validation"


def load(state: dict[str, Any], device: torch.device) -> VAE:
    """The VAE of a checkpoint in eval mode on `device`, with its latent statistics attached."""
    config = Config.from_dict(state["config"])
    model = build_model(config)
    model.load_state_dict(state["model"])
    model.class_names = list(config.class_names)
    model = model.to(device).eval()
    prior_state = state.get("prior")
    model.prior = MixturePrior.from_state(prior_state) if prior_state else None
    means = state.get("class_latent_means")
    model.class_latent_means = means.float().cpu() if means is not None else None
    return model


# ---------------------------------------------------------------------------------------------------
# Training


def latent_statistics(model: VAE, data: ImageSet, config: Config) -> dict[str, Any]:
    """What the checkpoint keeps about the training latents: per-class means (when the data has labels)
    and the fitted mixture prior (when asked), from up to config.stats_images training images."""
    count = min(len(data), config.stats_images)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(item_seed(config.seed, -2)))
    subset = data.subset(order[:count].sort().values)
    latents = encode_means(model, subset.images, subset.labels)
    stats: dict[str, Any] = {"prior": None, "class_latent_means": None}
    if subset.labels is not None and config.class_names:
        stats["class_latent_means"] = class_means(latents, subset.labels.cpu(), len(config.class_names))
    if config.prior_components > 0:
        stats["prior"] = fit_mixture(latents, config.prior_components, config.seed).to_state()
    return stats


def training_autocast_for(device: torch.device, mixed_precision: bool) -> torch.autocast:
    """bf16 autocast on CUDA only: on CPU it measured no faster for this VAE (BENCHMARKS.md, "Model
    engine"), so the CPU trains in float32."""
    return training_autocast(device, mixed_precision and device.type == "cuda")


def train(config: Config, data: ImageSet, ctx: RunContext, holdout: ImageSet | None = None) -> TrainOutput:
    """Train for config.total_steps (or until the time budget is spent); final metrics on `holdout`, else
    on a validation split held out of `data`."""
    torch.manual_seed(config.seed)
    device = ctx.device
    train_set, eval_set, eval_name = split_for_metrics(data, holdout, config)
    # channels_last: faster convolutions with oneDNN on CPU as well as on CUDA.
    model = build_model(config).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    noise = torch.Generator().manual_seed(config.seed)  # posterior draws, on CPU whatever the device
    images = train_set.images.to(device)
    labels = train_set.labels.to(device) if config.num_classes and train_set.labels is not None else None
    total = config.total_steps(len(train_set))
    warmup = min(config.kl_warmup_steps, total // 2)
    history = LossHistory(("negative_elbo", "recon", "kl"), total)  # moving averages for the curve
    step = 0

    if ctx.resume_from is not None:
        state = unpack_checkpoint(ctx.resume_from, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], noise)
        step = state["step"]
        history.load_state_dict(state["history"])
        history.resumed(step)
        ctx.elapsed_before = state["elapsed"]

    def make_checkpoint(extra: dict[str, Any] | None = None) -> bytes:
        return pack_checkpoint(
            {
                "family": FAMILY,
                "config": config.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "rng": capture_rng(noise),
                "history": history.state_dict(),
                "elapsed": ctx.elapsed(),
                "data_shape": list(data.images.shape[1:]),
                **(extra or {}),
            }
        )

    params = likelihood_params(model)
    started, steps_here = time.monotonic(), 0
    autocast = training_autocast_for(device, ctx.mixed_precision)
    model.train()
    while step < total:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, total, config.lr, config.lr_warmup_steps, config.min_lr_fraction)
        index = batch_indices(config.seed, step, config.batch_size, len(train_set)).to(device)
        x = to_unit_range(images[index]).contiguous(memory_format=torch.channels_last)
        vectors = model.label_vectors(labels[index] if labels is not None else None)
        eps = torch.randn(config.batch_size, config.latent_dim, generator=noise).to(device)
        with autocast:
            mean, logvar = model.encode(x, vectors)
            z = reparameterise(mean.float(), logvar.float(), eps)
            decoded = model.decode(z, vectors)
        recon = reconstruction_nll(config.likelihood, x, decoded.float(), params).mean()
        kl = gaussian_kl(mean.float(), logvar.float()).mean()
        beta = kl_beta(step, warmup)
        loss = recon + beta * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        step += 1
        steps_here += 1
        values = {"negative_elbo": recon.item() + kl.item(), "recon": recon.item(), "kl": kl.item()}
        history.update(step, values)
        rate = steps_here * config.batch_size / max(time.monotonic() - started, 1e-9)
        metrics = {"loss": loss.item(), "recon": values["recon"], "kl": values["kl"], "beta": beta}
        if ctx.step_done(step, total, make_checkpoint, samples_per_sec=rate, **metrics):
            break

    train_seconds = time.monotonic() - started
    model.eval()
    stats = latent_statistics(model, train_set, config)
    final = make_checkpoint(stats)
    trained = load(unpack_checkpoint(final, device), device)
    count = min(len(eval_set), config.eval_images)
    eval_labels = eval_set.labels[:count] if config.num_classes and eval_set.labels is not None else None
    terms = elbo_terms(trained, eval_set.images[:count], eval_labels)
    seeds, grid_labels, row_names = sample_grid_plan(config.num_classes, config.class_names)
    grid_png_bytes = grid_png(to_uint8(sample(trained, seeds, grid_labels)).cpu(), 8, row_labels=row_names)
    pixels = config.channels * config.image_size**2
    metrics_out = {
        f"{eval_name}_negative_elbo": terms["negative_elbo"],
        f"{eval_name}_recon": terms["recon"],
        f"{eval_name}_kl": terms["kl"],
        "negative_elbo": terms["negative_elbo"],
        "recon": terms["recon"],
        "kl": terms["kl"],
        "metrics_split": eval_name,
        "likelihood": config.likelihood,
        "steps": step,
        "images_seen": step * config.batch_size,
        "conditional": bool(config.num_classes),
        "samples_per_sec": steps_here * config.batch_size / max(train_seconds, 1e-9),
        "seconds": ctx.elapsed(),
    }
    if config.likelihood == "logistic":
        metrics_out["bits_per_dim"] = terms["negative_elbo"] / (pixels * math.log(2.0))
    return TrainOutput(final, metrics_out, grid_png_bytes, history.png("nats per image (moving average)"))
