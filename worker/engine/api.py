"""The engine's front door: the only module the worker's runners and caches import from the engine.

Everything here is plain PyTorch + NumPy: no SQL, S3, Celery or environment variables (the runner passes
settings in). The runners turn a job's validated params into these calls and store what comes back.

- `train(family, options, data, ctx, holdout=None) -> TrainOutput`
    family: a registered family (families.py); `options` the family's parsed option schema
    (shared/specs.py), trusted as given (a plain dict, from a direct caller, is parsed once, raising
    `ConfigError` naming the field); `data` the training `ImageSet` (a deterministic validation split is
    taken inside, seeded by the options' seed); `ctx` a `RunContext` (progress, cancel, checkpoints,
    resume, time budget, device).
- `load(checkpoint, device=None) -> LoadedModel`   (self-describing checkpoints: family + config inside)
- `generate(model, seeds, labels, *, truncation, temperature, chunk_size, ctx) -> Iterator[np.ndarray]`
    yields uint8 (b, H, W, C) chunks in item order; item i depends only on (model, seeds[i], labels[i],
    options) — never on chunk size or on which worker runs it.
- `item_seed(job_seed, index) -> int`: the per-item seed of item `index` of a job seeded `job_seed`.
- `edit(model, request, classifier=None, ctx=None) -> EditOutput`
- `evaluate(model, classifier, real, *, num_samples, seed, ctx) -> dict`
- data sets (`load_builtin`, `load_upload`, `convert_channels`) and pictures (`encode_png`, `encode_pngs`,
  `grid_png`, `resize_images`) for the runners' inputs and outputs.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import torch

from shared.specs import TrainOptions
from worker.engine import cnn
from worker.engine.contract import EDIT_OPERATIONS, EditOutput, EditRequest, LoadedModel, TrainOutput
from worker.engine.data import convert_channels, load_builtin, load_upload
from worker.engine.evaluation import evaluate
from worker.engine.families import FAMILIES, model_family
from worker.engine.images import encode_png, encode_pngs, grid_png, resize_images
from worker.engine.imageset import ImageSet
from worker.engine.latents import item_seed
from worker.engine.runtime import Canceled, ConfigError, RunContext, pick_device, unpack_checkpoint
from worker.engine.sampling import generate

__all__ = [
    "EDIT_OPERATIONS", "FAMILIES", "Canceled", "ConfigError", "EditOutput", "EditRequest", "ImageSet",
    "LoadedModel", "RunContext", "TrainOutput", "classifier_function", "convert_channels", "edit",
    "encode_png", "encode_pngs", "evaluate", "family_module", "generate", "grid_png", "item_seed", "load",
    "load_builtin", "load_upload", "resize_images", "train",
]  # fmt: skip


def family_module(family: str) -> ModuleType:
    """The registered family's module (its Config, train and load, and what else it offers)."""
    return model_family(family).module


def train(
    family: str,
    options: TrainOptions | Mapping[str, Any],
    data: ImageSet,
    ctx: RunContext,
    holdout: ImageSet | None = None,
) -> TrainOutput:
    """`holdout`: the data set's official test split when it has one; metrics are reported on it,
    else on the deterministic validation split taken from `data`."""
    module = family_module(family)
    config = module.Config.from_options(options, data)
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


def edit(
    model: LoadedModel,
    request: EditRequest,
    classifier: LoadedModel | None = None,
    ctx: RunContext | None = None,
) -> EditOutput:
    """Dispatch to the family's edits. `classifier` (a CNN trained on the same data; the API checked its
    family) scores class edits (target_class_rate); without it that metric is left out."""
    family_edit = model_family(model.family).edit
    if family_edit is None:
        raise ConfigError(f"model: a {model.family} model cannot edit images (gan or vae can)")
    if request.operation not in EDIT_OPERATIONS:
        raise ConfigError(
            f"operation: unknown edit {request.operation!r} (one of {', '.join(EDIT_OPERATIONS)})"
        )
    return family_edit(model, request, classifier_function(classifier), ctx)


def classifier_function(classifier: LoadedModel | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """images in [-1, 1] (B, C, H, W) -> logits (B, K), from a loaded CNN; None passes through."""
    if classifier is None:
        return None
    return lambda images: cnn.classify(classifier.module, images)
