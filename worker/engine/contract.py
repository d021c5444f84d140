"""What the engine's front door (worker/engine/api.py) hands out and takes: plain data, no model code,
so the family modules can name these types without importing the front door."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
