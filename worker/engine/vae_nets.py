"""The VAE's networks: a convolutional encoder and a mirrored decoder for 28, 32 and 64 pixel images.

Strided convolutions halve the resolution down to s0 = size // 4 (28 -> 7, 32 -> 8; 64 adds a stage and
stops at 8); the decoder mirrors them with nearest-neighbour upsampling followed by a convolution (no
checkerboard artefacts). GroupNorm, not BatchNorm: an item's output never depends on its batch, in
training or at inference. A conditional model embeds its label and feeds the embedding to both halves.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from shared.specs import IMAGE_SIZES

EMBED_DIM = 32  # label embedding width of conditional models
LOGVAR_RANGE = (-12.0, 8.0)  # posterior log-variances kept where exp() and its gradient stay finite


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


def level_channels(width: int, size: int) -> list[int]:
    """Channels per resolution level, full size first: 28/32 -> 3 levels, 64 -> 4."""
    if size not in IMAGE_SIZES:
        raise ValueError(f"image size must be one of {IMAGE_SIZES}")
    channels = [max(width // 2, 8), width, 2 * width]
    return [max(width // 4, 8), *channels] if size == 64 else channels


class Encoder(nn.Module):
    """(B, C, H, W) in [-1, 1] (+ label vectors (B, E)) -> posterior mean and log-variance (B, D) each."""

    def __init__(self, channels: int, size: int, width: int, latent_dim: int, embed_dim: int) -> None:
        super().__init__()
        levels = level_channels(width, size)
        layers: list[nn.Module] = [nn.Conv2d(channels, levels[0], 3, padding=1), nn.SiLU()]
        for c_in, c_out in itertools.pairwise(levels):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), norm(c_out), nn.SiLU()]
        self.features = nn.Sequential(*layers, nn.Flatten())
        bottom = size >> (len(levels) - 1)
        self.head = nn.Linear(levels[-1] * bottom * bottom + embed_dim, 2 * latent_dim)

    def forward(
        self, images: torch.Tensor, label_vectors: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(images)
        if label_vectors is not None:
            h = torch.cat([h, label_vectors.to(h.dtype)], dim=1)
        mean, logvar = self.head(h).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)


class Decoder(nn.Module):
    """Latents (B, D) (+ label vectors (B, E)) -> (B, C, H, W) parameters of the pixel likelihood
    (the mean for logistic/gaussian, logits for bernoulli)."""

    def __init__(self, channels: int, size: int, width: int, latent_dim: int, embed_dim: int) -> None:
        super().__init__()
        levels = level_channels(width, size)[::-1]  # bottom first
        self.bottom = size >> (len(levels) - 1)
        self.stem = nn.Linear(latent_dim + embed_dim, levels[0] * self.bottom * self.bottom)
        layers: list[nn.Module] = [
            nn.Unflatten(1, (levels[0], self.bottom, self.bottom)),
            norm(levels[0]),
            nn.SiLU(),
            nn.Conv2d(levels[0], levels[0], 3, padding=1),
            norm(levels[0]),
            nn.SiLU(),
        ]
        for c_in, c_out in itertools.pairwise(levels):
            upsample = [nn.Upsample(scale_factor=2.0), nn.Conv2d(c_in, c_out, 3, padding=1)]
            layers += [*upsample, norm(c_out), nn.SiLU()]
        layers.append(nn.Conv2d(levels[-1], channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor, label_vectors: torch.Tensor | None = None) -> torch.Tensor:
        if label_vectors is not None:
            latents = torch.cat([latents, label_vectors.to(latents.dtype)], dim=1)
        return self.body(self.stem(latents))


class VAE(nn.Module):
    """Encoder, decoder, label embedding and the likelihood's own learned parameters.

    Attributes set by `vae.load` (not weights): `prior` (a fitted MixturePrior or None: N(0, I)),
    `class_latent_means` ((K, D) mean posterior mean per class of the training data, or None) and
    `class_names` (the training data's classes, conditioned on or not)."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        width: int,
        latent_dim: int,
        num_classes: int,
        likelihood: str,
    ) -> None:
        super().__init__()
        self.image_size, self.channels = image_size, channels
        self.latent_dim, self.num_classes, self.likelihood = latent_dim, num_classes, likelihood
        embed_dim = EMBED_DIM if num_classes else 0
        self.embedding = nn.Embedding(num_classes, EMBED_DIM) if num_classes else None
        self.encoder = Encoder(channels, image_size, width, latent_dim, embed_dim)
        self.decoder = Decoder(channels, image_size, width, latent_dim, embed_dim)
        if likelihood == "logistic":
            # Per pixel and channel, independent of z: sharp means, proper nats on 8-bit data.
            self.log_scale = nn.Parameter(torch.full((channels, image_size, image_size), -1.0))
        elif likelihood == "gaussian":
            self.log_sigma = nn.Parameter(torch.tensor(-1.0))
        elif likelihood != "bernoulli":
            raise ValueError(f"unknown likelihood {likelihood!r}")
        self.prior = None
        self.class_latent_means: torch.Tensor | None = None
        self.class_names: list[str] = []

    def label_vectors(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """(B,) class indices -> (B, E) embeddings; None for unconditional models."""
        if self.embedding is None or labels is None:
            return None
        return self.embedding(labels.to(self.embedding.weight.device))

    def encode(
        self, images: torch.Tensor, label_vectors: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(images, label_vectors)

    def decode(self, latents: torch.Tensor, label_vectors: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(latents, label_vectors)
