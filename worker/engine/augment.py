"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for GANs trained on small data sets, and
the adaptive probability that switches it on (StyleGAN2-ADA, Karras et al. 2020).

The discriminator sees every real *and* every generated image through the same random policy
(brightness, saturation, contrast, translation, cutout), so it cannot memorise the few real images,
and the generator's gradient flows back through the augmentation. Each transform applies to each image
with probability p: 1 is DiffAugment, and the adaptive scheme moves p with the discriminator's
overfitting (AdaptiveProbability). All randomness comes from the caller's generator, so a run stays
reproducible and resumable.
"""

from __future__ import annotations

import torch

ADA_TARGET = 0.6  # StyleGAN2-ADA's target for r_t = E[sign(D(real))]
ADA_IMAGES = 100_000  # real images over which p can move from 0 to 1 (ADA: 500k, for far longer runs)


def diff_augment(images: torch.Tensor, generator: torch.Generator, probability: float = 1.0) -> torch.Tensor:
    """images (B, C, H, W) in [-1, 1] -> augmented images, differentiable w.r.t. the input.

    Each transform applies to each image with `probability`; at 0 the images come back untouched and
    no random numbers are drawn, at 1 every transform applies (DiffAugment's policy)."""
    if probability <= 0:
        return images
    for transform in (brightness, saturation, contrast, translate, cutout):
        changed = transform(images, generator)
        if probability < 1:
            applies = _uniform((len(images), 1, 1, 1), generator, images.device) < probability
            changed = torch.where(applies, changed, images)
        images = changed
    return images


def overfitting(real_scores: torch.Tensor) -> float:
    """r_t = E[sign(D(x_real))]: 0 when the discriminator cannot tell training images from fakes, 1 when
    it calls every one of them real with a margin (it has learnt them by heart)."""
    return float(torch.sign(real_scores.detach().float()).mean())


class AdaptiveProbability:
    """StyleGAN2-ADA's controller: after each discriminator step p moves by batch / ADA_IMAGES up when
    r_t exceeds ADA_TARGET, down otherwise, within [0, 1]. A discriminator that does not overfit keeps
    r_t under the target and p at 0 (no augmentation, no cost); on a few thousand images r_t climbs
    within a few hundred steps and p follows until the augmentation holds it at the target."""

    def __init__(self, p: float = 0.0, target: float = ADA_TARGET, images: int = ADA_IMAGES) -> None:
        self.p, self.target, self.images = p, target, images

    def update(self, real_scores: torch.Tensor) -> float:
        step = len(real_scores) / self.images
        self.p = min(1.0, max(0.0, self.p + (step if overfitting(real_scores) > self.target else -step)))
        return self.p


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # Draw on the generator's device (CPU) then move: the same numbers on every device.
    return torch.rand(shape, generator=generator).to(device)


def brightness(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Add a per-image offset in [-0.5, 0.5) (a quarter of the [-1, 1] range, as in DiffAugment)."""
    return images + (_uniform((len(images), 1, 1, 1), generator, images.device) - 0.5)


def saturation(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Scale each image's distance from its grey value by a factor in [0, 2) (no-op on 1 channel)."""
    mean = images.mean(dim=1, keepdim=True)
    return (images - mean) * (_uniform((len(images), 1, 1, 1), generator, images.device) * 2) + mean


def contrast(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Scale each image's distance from its mean by a factor in [0.5, 1.5)."""
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - mean) * (_uniform((len(images), 1, 1, 1), generator, images.device) + 0.5) + mean


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
