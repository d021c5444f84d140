"""The GAN's networks: a DCGAN-style generator and a spectrally normalised (projection) discriminator.

Both work at the data's native size (28, 32 or 64) with 1 or 3 channels. Conditioning is optional:
the generator takes a class *vector* (B, K) - one-hot for a label, any mix for label blends and
attribute edits - through conditional BatchNorm; the discriminator adds the projection term
<embed(y), features> (Miyato & Koyama, 2018).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from shared.specs import IMAGE_SIZES


def base_size(image_size: int) -> int:
    """Side of the generator's first feature map: 7 for 28, 8 for 32 and 64 (64 adds a stage)."""
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"image size must be one of {IMAGE_SIZES}, got {image_size}")
    return image_size // 8 if image_size == 64 else image_size // 4


def stage_channels(image_size: int, width: int) -> list[int]:
    """Channels of the generator's feature maps, coarse to fine (each stage doubles the side).

    `width` is the coarsest 28/32 stage's channel count; the default 64 gives 64 -> 32 -> 16, about
    half the multiply-adds of the DCGAN reference per step, so a CPU trains twice the steps in the
    same time. 64x64 images add a 2*width stage in front. The discriminator mirrors the list."""
    top = [width * 2] if image_size == 64 else []
    return [max(c, 8) for c in [*top, width, width // 2, width // 4]]


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift come from the class vector (B, K) (plain BatchNorm when K = 0).

    A bias-free linear map of a one-hot vector is an embedding lookup; for a blend of classes it
    blends their scales and shifts, which is what label interpolation and attribute edits rely on."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.norm = nn.BatchNorm2d(channels, affine=num_classes == 0)
        if num_classes:
            self.gain = nn.Linear(num_classes, channels, bias=False)
            self.shift = nn.Linear(num_classes, channels, bias=False)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        x = self.norm(x)
        if not self.num_classes:
            return x
        assert y is not None, "a conditional generator needs class vectors"
        return x * self.gain(y)[:, :, None, None] + self.shift(y)[:, :, None, None]


UPSAMPLING = ("transposed", "resize")


def upsampling_stage(channels_in: int, channels_out: int, kind: str) -> nn.Module:
    """A stage that doubles the side.

    "transposed": a 4x4 stride-2 transposed convolution, 4 multiply-adds per output pixel and input
    channel; its kernel overlaps unevenly (each output pixel sums 4 of 16 taps in one of four phase
    patterns), which shows as a checkerboard where training has not evened the phases out.
    "resize": nearest-neighbour doubling then a 3x3 convolution (Odena et al., 2016, "Deconvolution
    and checkerboard artifacts"): every output pixel sees the same taps, so no checkerboard, at 9
    multiply-adds per output pixel and input channel."""
    if kind == "transposed":
        return nn.ConvTranspose2d(channels_in, channels_out, 4, 2, 1, bias=False)
    if kind == "resize":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(channels_in, channels_out, 3, 1, 1, bias=False),
        )
    raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {kind!r}")


class Generator(nn.Module):
    """z (B, latent_dim) [+ class vector (B, K)] -> images (B, C, S, S) in [-1, 1]."""

    def __init__(
        self,
        latent_dim: int,
        width: int,
        image_size: int,
        channels: int,
        num_classes: int,
        upsample: str = "transposed",
    ) -> None:
        super().__init__()
        self.latent_dim, self.image_size, self.channels = latent_dim, image_size, channels
        self.num_classes = num_classes
        chans = stage_channels(image_size, width)
        self.s0 = base_size(image_size)
        # The class vector also enters with z: a direct path that makes conditioning take hold within a
        # few hundred steps (through the BatchNorm gains alone it takes thousands); still linear in y.
        self.project = nn.Linear(latent_dim + num_classes, chans[0] * self.s0 * self.s0, bias=False)
        self.norms = nn.ModuleList([ConditionalBatchNorm2d(c, num_classes) for c in chans])
        self.ups = nn.ModuleList([upsampling_stage(a, b, upsample) for a, b in itertools.pairwise(chans)])
        self.to_image = nn.Conv2d(chans[-1], channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.project(z if y is None else torch.cat([z, y], dim=1)).view(len(z), -1, self.s0, self.s0)
        x = F.relu(self.norms[0](x, y))
        for up, norm in zip(self.ups, self.norms[1:], strict=True):
            x = F.relu(norm(up(x), y))
        return torch.tanh(self.to_image(x))

    def class_vectors(self, labels: torch.Tensor) -> torch.Tensor | None:
        """(B,) int labels -> (B, K) one-hot on the generator's device; None when unconditional."""
        if not self.num_classes:
            return None
        device = self.project.weight.device
        return F.one_hot(labels.to(device).long(), self.num_classes).float()


class Discriminator(nn.Module):
    """images (B, C, S, S) [+ labels (B,)] -> real/fake scores (B,); spectral norm on every layer."""

    def __init__(self, width: int, image_size: int, channels: int, num_classes: int) -> None:
        super().__init__()
        base_size(image_size)  # validates the size
        chans = stage_channels(image_size, width)[::-1]
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(channels, chans[0], 3, 1, 1))]
        for a, b in itertools.pairwise(chans):  # each stage halves the side
            layers += [nn.LeakyReLU(0.2), spectral_norm(nn.Conv2d(a, b, 4, 2, 1))]
        layers += [
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(chans[-1], chans[-1], 3, 1, 1)),
            nn.LeakyReLU(0.2),
        ]
        self.features = nn.Sequential(*layers)
        self.score = spectral_norm(nn.Linear(chans[-1], 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, chans[-1])) if num_classes else None
        # An auxiliary class head (AC-GAN): trained on real images, it teaches the generator to make each
        # class recognisable much sooner than the projection term alone does.
        self.classes = spectral_norm(nn.Linear(chans[-1], num_classes)) if num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.scores_and_logits(x, labels)[0]

    def scores_and_logits(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Real/fake scores (B,) and, when conditional, class logits (B, K)."""
        h = self.features(x).sum(dim=(2, 3))  # (B, D): global sum pooling, as in SNGAN
        out = self.score(h).squeeze(1)
        if self.embed is None or self.classes is None:
            return out, None
        assert labels is not None, "a conditional discriminator needs labels"
        return out + (self.embed(labels) * h).sum(dim=1), self.classes(h)
