"""Sampling a generative model: seeds (and labels) in, uint8 images out, lazily, chunk by chunk."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from worker.engine.contract import LoadedModel
from worker.engine.families import model_family
from worker.engine.imageset import to_uint8
from worker.engine.latents import SAMPLE_BLOCK
from worker.engine.runtime import ConfigError, RunContext


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
    sample = model_family(model.family).sample
    if sample is None:
        raise ConfigError(f"model: a {model.family} model cannot generate images (gan or vae can)")
    if chunk_size < 1:
        raise ConfigError("chunk_size: must be at least 1")
    seeds = [int(seed) for seed in seeds]
    item_labels = _item_labels(model, labels, len(seeds))
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
