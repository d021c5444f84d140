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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from worker.engine.imageset import ImageSet
from worker.engine.latents import item_seed
from worker.engine.runtime import RunContext

FAMILIES = ("cnn", "gan", "vae")
__all__ = ["item_seed"]

EDIT_OPERATIONS = ("reconstruct", "interpolate", "inpaint", "class_swap", "attribute", "invert")


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
    raise NotImplementedError


def load(checkpoint: bytes, device: torch.device | None = None) -> LoadedModel:
    raise NotImplementedError


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
    raise NotImplementedError


def edit(
    model: LoadedModel,
    request: EditRequest,
    classifier: LoadedModel | None = None,
    ctx: RunContext | None = None,
) -> EditOutput:
    """Dispatch to the family's edits module. `classifier` (a CNN trained on the same data) scores class
    edits (target_class_rate); without it that metric is left out."""
    raise NotImplementedError


def evaluate(
    model: LoadedModel,
    classifier: LoadedModel | None,
    real: ImageSet,
    *,
    num_samples: int = 10_000,
    seed: int = 0,
    ctx: RunContext | None = None,
) -> dict[str, Any]:
    raise NotImplementedError
