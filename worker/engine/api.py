"""The engine's interface to the job service (the only module `worker/tasks` imports from the engine).

Everything here is plain PyTorch + NumPy: no SQL, S3 or Celery. The worker's tasks turn a job's validated
params into these calls and store what comes back.

Contract (fixed; the family modules implement it):

- `train(family, options, data, ctx, holdout=None) -> TrainOutput`
    family in {"cnn", "gan", "vae"}; `options` is the family's option dict (validated by the family's
    `Config.from_options`, raising `ConfigError` naming the field); `data` the training `ImageSet`
    (a deterministic validation split is taken inside, seeded by options["seed"]); `ctx` a `RunContext`
    (progress, cancel, checkpoints, resume, time budget, device).
- `load(checkpoint, device=None) -> LoadedModel`   (self-describing checkpoints: family + config inside)
- `generate(model, seeds, labels, *, truncation, temperature, chunk_size, ctx) -> Iterator[np.ndarray]`
    yields uint8 (b, H, W, C) chunks in item order; item i depends only on (model, seeds[i], labels[i],
    options) — never on chunk size or on which worker runs it.
- `item_seed(job_seed, index) -> int`: the per-item seed of item `index` of a job seeded `job_seed`.
- `edit(model, request, classifier=None, ctx=None) -> EditOutput`
- `evaluate(model, classifier, real, *, num_samples, seed, ctx) -> dict`
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import torch

from worker.engine.imageset import ImageSet, to_uint8
from worker.engine.latents import SAMPLE_BLOCK, item_seed
from worker.engine.runtime import ConfigError, RunContext, pick_device, unpack_checkpoint

FAMILIES = ("cnn", "gan", "vae")
__all__ = ["item_seed"]

EDIT_OPERATIONS = ("reconstruct", "interpolate", "inpaint", "class_swap", "attribute", "invert")
GENERATIVE_FAMILIES = ("gan", "vae")


def family_module(family: str) -> ModuleType:
    """The family's module, imported on first use: a broken or missing family never breaks the others."""
    if family not in FAMILIES:
        raise ConfigError(f"family: unknown model family {family!r} (one of {', '.join(FAMILIES)})")
    return importlib.import_module(f"worker.engine.{family}")


@dataclass
class TrainOutput:
    checkpoint: bytes  # self-describing: family, config, weights (EMA for GAN), step, data shape
    metrics: dict[str, Any]  # family metrics (see evaluation); JSON-serialisable
    sample_grid_png: bytes  # samples (GAN/VAE) or validation images with predictions (CNN)
    loss_curve_png: bytes


@dataclass
class LoadedModel:
    family: str
    config: dict[str, Any]
    image_size: int
    channels: int
    num_classes: int  # 0 when unconditional / unlabelled
    class_names: list[str]
    version_hash: str  # sha256 of the checkpoint bytes: the reproducibility record's model hash
    module: Any  # family-specific model object (eval mode, on its device)


@dataclass
class EditRequest:
    operation: str  # one of EDIT_OPERATIONS
    images: np.ndarray | None = None  # (N, H, W, C) uint8 sources, at the model's size and channels
    labels: Sequence[int] | None = None  # source labels for conditional models
    seeds: Sequence[int] | None = None  # latent seeds instead of images (interpolate between seeds)
    target_labels: Sequence[int] | None = None  # class_swap / attribute: the class to move toward
    mask: np.ndarray | None = None  # inpaint: (H, W) bool, True where pixels are missing
    steps: int = 8  # interpolate: number of frames; inpaint/invert: optimisation steps scale
    strength: float = 1.0  # attribute: how far along the class-difference direction
    seed: int = 0


@dataclass
class EditOutput:
    images: np.ndarray  # (M, H, W, C) uint8
    captions: list[str] = field(default_factory=list)  # one per image: what it is
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. masked_psnr, target_class_rate


def train(
    family: str,
    options: dict[str, Any],
    data: ImageSet,
    ctx: RunContext,
    holdout: ImageSet | None = None,
) -> TrainOutput:
    """`holdout`: the data set's official test split when it has one; metrics are reported on it,
    else on the deterministic validation split taken from `data`."""
    module = family_module(family)
    config = module.Config.from_options(dict(options), data)
    return module.train(config, data, ctx, holdout)


def load(checkpoint: bytes, device: torch.device | None = None) -> LoadedModel:
    """Rebuild a model from its checkpoint (eval mode, on `device`; default CUDA when present)."""
    device = device or pick_device()
    try:
        state = unpack_checkpoint(checkpoint)  # on the CPU; the family moves what it keeps to `device`
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ConfigError(f"checkpoint: cannot be read ({str(error).splitlines()[0]})") from None
    if not isinstance(state, dict) or "family" not in state or "config" not in state:
        raise ConfigError("checkpoint: not a genq model checkpoint (no family/config inside)")
    module = family_module(state["family"])
    config = dict(state["config"])
    return LoadedModel(
        family=state["family"],
        config=config,
        image_size=int(config["image_size"]),
        channels=int(config["channels"]),
        num_classes=int(config.get("num_classes") or 0),
        class_names=list(config.get("class_names") or []),
        version_hash=hashlib.sha256(checkpoint).hexdigest(),
        module=module.load(state, device),
    )


def generate(
    model: LoadedModel,
    seeds: Sequence[int],
    labels: Sequence[int] | None = None,
    *,
    truncation: float = 1.0,
    temperature: float = 1.0,
    chunk_size: int = 256,
    ctx: RunContext | None = None,
) -> Iterator[np.ndarray]:
    """Checks run at the call (a bad request fails before any work); the images come lazily, one chunk
    at a time, so `count` images are never all in memory."""
    if model.family not in GENERATIVE_FAMILIES:
        raise ConfigError(f"model: a {model.family} model cannot generate images (gan or vae can)")
    if chunk_size < 1:
        raise ConfigError("chunk_size: must be at least 1")
    seeds = [int(seed) for seed in seeds]
    item_labels = _item_labels(model, labels, len(seeds))
    sample = family_module(model.family).sample
    # The samplers run fixed-size blocks (latents.in_fixed_blocks); they are called with whole blocks and
    # their output handed out chunk by chunk, so a small chunk_size costs no padded rows.
    work = -(-chunk_size // SAMPLE_BLOCK) * SAMPLE_BLOCK
    return _chunks(model, sample, seeds, item_labels, truncation, temperature, chunk_size, work, ctx)


def _chunks(
    model: LoadedModel,
    sample: Callable[..., torch.Tensor],
    seeds: list[int],
    labels: list[int] | None,
    truncation: float,
    temperature: float,
    chunk_size: int,
    work: int,
    ctx: RunContext | None,
) -> Iterator[np.ndarray]:
    for start in range(0, len(seeds), work):
        if ctx is not None:
            ctx.check()
        work_labels = None if labels is None else labels[start : start + work]
        with torch.inference_mode():
            images = sample(
                model.module, seeds[start : start + work], work_labels,
                truncation=truncation, temperature=temperature,
            )  # fmt: skip
            batch = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()  # (b, H, W, C)
        for offset in range(0, len(batch), chunk_size):
            yield batch[offset : offset + chunk_size]
            if ctx is not None:
                done = start + min(offset + chunk_size, len(batch))
                ctx.report("generate", done, len(seeds))


def _item_labels(model: LoadedModel, labels: Sequence[int] | int | None, count: int) -> list[int] | None:
    """One label per item (a single int applies to all), checked against the model's classes."""
    if labels is None:
        return None
    if not model.num_classes:
        raise ConfigError("labels: this model is unconditional; leave labels out")
    item_labels = [int(labels)] * count if isinstance(labels, int) else [int(label) for label in labels]
    if len(item_labels) != count:
        raise ConfigError(f"labels: {len(item_labels)} given for {count} items")
    if any(not 0 <= label < model.num_classes for label in item_labels):
        raise ConfigError(f"labels: must be in [0, {model.num_classes})")
    return item_labels


def edit(
    model: LoadedModel,
    request: EditRequest,
    classifier: LoadedModel | None = None,
    ctx: RunContext | None = None,
) -> EditOutput:
    """Dispatch to the family's edits module. `classifier` (a CNN trained on the same data) scores class
    edits (target_class_rate); without it that metric is left out."""
    if model.family not in GENERATIVE_FAMILIES:
        raise ConfigError(f"model: a {model.family} model cannot edit images (gan or vae can)")
    if request.operation not in EDIT_OPERATIONS:
        raise ConfigError(
            f"operation: unknown edit {request.operation!r} (one of {', '.join(EDIT_OPERATIONS)})"
        )
    edits = importlib.import_module(f"worker.engine.{model.family}_edits")
    return edits.edit(model, request, classifier_function(classifier), ctx)


def classifier_function(classifier: LoadedModel | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """images in [-1, 1] (B, C, H, W) -> logits (B, K), from a loaded CNN; None passes through."""
    if classifier is None:
        return None
    if classifier.family != "cnn":
        raise ConfigError(f"classifier: must be a cnn model, not {classifier.family}")
    cnn = family_module("cnn")
    return lambda images: cnn.classify(classifier.module, images)


def evaluate(
    model: LoadedModel,
    classifier: LoadedModel | None,
    real: ImageSet,
    *,
    num_samples: int = 10_000,
    seed: int = 0,
    ctx: RunContext | None = None,
) -> dict[str, Any]:
    """Sample-quality metrics of a GAN/VAE against `real` (held-out images) in the feature space of
    `classifier`, or a CNN's accuracy on `real`. See worker/engine/evaluation.py."""
    from worker.engine.evaluation import evaluate_generator

    return evaluate_generator(model, classifier, real, num_samples, seed, ctx)
