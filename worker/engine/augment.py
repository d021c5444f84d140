"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for GANs trained on small data sets.

The discriminator sees every real *and* every generated image through the same random policy
(brightness, translation, cutout), so it cannot memorise the few real images, and the generator's
gradient flows back through the augmentation. All randomness comes from the caller's generator, so a
run stays reproducible and resumable.
"""

from __future__ import annotations

import torch


def diff_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """images (B, C, H, W) in [-1, 1] -> augmented images, differentiable w.r.t. the input."""
    return cutout(translate(brightness(images, generator), generator), generator)


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # Draw on the generator's device (CPU) then move: the same numbers on every device.
    return torch.rand(shape, generator=generator).to(device)


def brightness(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Add a per-image offset in [-0.5, 0.5) (a quarter of the [-1, 1] range, as in DiffAugment)."""
    return images + (_uniform((len(images), 1, 1, 1), generator, images.device) - 0.5)


def translate(images: torch.Tensor, generator: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ratio * side pixels in each direction, filling with -1 (black)."""
    b, _, h, w = images.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shifts = (
        _uniform((b, 2), generator, images.device)
        * torch.tensor([2 * max_dy + 1, 2 * max_dx + 1], device=images.device)
    ).long()  # (B, 2) in [0, 2*max]
    padded = torch.nn.functional.pad(images, (max_dx, max_dx, max_dy, max_dy), value=-1.0)
    rows = torch.arange(h, device=images.device)[None, :] + shifts[:, :1]  # (B, H)
    cols = torch.arange(w, device=images.device)[None, :] + shifts[:, 1:]  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    # (B, H, W, C) gathered, back to (B, C, H, W)
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(images: torch.Tensor, generator: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Blank one (ratio*H, ratio*W) square per image at a random place (set to 0, mid-grey)."""
    b, _, h, w = images.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    corner = _uniform((b, 2), generator, images.device) * torch.tensor(
        [h + 1 - ch % 2, w + 1 - cw % 2], device=images.device
    )
    top = corner[:, :1].long() - ch // 2  # (B, 1); the square may hang over the border
    left = corner[:, 1:].long() - cw // 2
    rows = torch.arange(h, device=images.device)[None, :]
    cols = torch.arange(w, device=images.device)[None, :]
    inside_rows = (rows >= top) & (rows < top + ch)  # (B, H)
    inside_cols = (cols >= left) & (cols < left + cw)  # (B, W)
    keep = ~(inside_rows[:, :, None] & inside_cols[:, None, :])  # (B, H, W)
    return images * keep[:, None].to(images.dtype)
