"""How long a GAN or VAE trains, and which images each step sees: both pure functions of the config,
so a resumed run needs no state for them."""

from __future__ import annotations

import torch

from worker.engine.latents import item_seed


class StepBudget:
    """`total_steps` of a Config with max_steps, epochs, batch_size and default_steps fields."""

    max_steps: int | None
    epochs: int | None
    batch_size: int
    default_steps: int

    def total_steps(self, num_images: int) -> int:
        """max_steps, else epochs over `num_images`, else the family's default_steps."""
        if self.max_steps:
            return self.max_steps
        if self.epochs:
            return self.epochs * -(-num_images // self.batch_size)
        return self.default_steps


def batch_indices(seed: int, step: int, batch_size: int, num_images: int) -> torch.Tensor:
    """Indices of step `step`'s batch: a stream of per-epoch permutations cut into batches (works for
    data sets smaller than a batch)."""
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs, within = positions // num_images, positions % num_images
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        order = torch.randperm(num_images, generator=torch.Generator().manual_seed(item_seed(seed, epoch)))
        chosen = epochs == epoch
        out[chosen] = order[within[chosen]]
    return out
