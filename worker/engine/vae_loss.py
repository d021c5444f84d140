"""The VAE's loss as small pure functions: reparameterisation, Gaussian KL, the pixel likelihoods.

Every likelihood returns nats per image (summed over pixels and channels) for images in [-1, 1]:
- "logistic": discretised logistic on the 8-bit grid (PixelCNN++), proper nats for 8-bit data;
- "bernoulli": binary cross-entropy on [0, 1] intensities (as pytorch/examples' VAE; not a proper
  likelihood for grey levels, but the customary baseline number);
- "gaussian": a Gaussian with one learned variance, reported on the 8-bit scale (density times the bin
  width 2/255, i.e. + log(127.5) nats per value), comparable with the logistic's nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LIKELIHOODS = ("logistic", "bernoulli", "gaussian")
HALF_BIN = 1.0 / 255.0  # half the width of an 8-bit bin in [-1, 1]
LOG_BIN_SCALE = math.log(127.5)  # -log(bin width 2/255)
MIN_LOG_SCALE = -7.0
MIN_LOG_SIGMA = -6.0


def reparameterise(mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = mean + sigma * noise, noise ~ N(0, I) drawn by the caller (from its own generator)."""
    return mean + torch.exp(0.5 * logvar) * noise


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per item: (B, D) -> (B,) nats."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def kl_beta(step: int, warmup_steps: int) -> float:
    """KL weight: linear 0 -> 1 over the warm-up, then 1 (the true ELBO)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def discretised_logistic_log_probs(
    images: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """Per-value log-probabilities (same shape as images) of 8-bit values x in [-1, 1] under a logistic
    discretised into 256 bins; the end bins take the tails, so the 256 probabilities sum to 1."""
    log_scale = log_scale.clamp(min=MIN_LOG_SCALE)
    centred = images - mean
    inv_scale = torch.exp(-log_scale)
    plus_in = inv_scale * (centred + HALF_BIN)
    minus_in = inv_scale * (centred - HALF_BIN)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid(plus_in): the bottom bin
    log_one_minus_cdf_minus = -F.softplus(minus_in)  # the top bin
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(minus_in)
    # Far in a tail the difference underflows: use the density at the centre times the bin width.
    mid_in = inv_scale * centred
    log_pdf_mid = mid_in - log_scale - 2.0 * F.softplus(mid_in)
    log_mid = torch.where(
        cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid - LOG_BIN_SCALE
    )
    return torch.where(
        images < -0.999, log_cdf_plus, torch.where(images > 0.999, log_one_minus_cdf_minus, log_mid)
    )


def bernoulli_log_probs(images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-value log-likelihoods of [0, 1] intensities under logits (minus binary cross-entropy)."""
    targets = (images + 1.0) * 0.5
    return -F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def gaussian_log_probs(images: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Per-value log-densities on the 8-bit scale under a Gaussian with one learned log-sigma."""
    log_sigma = log_sigma.clamp(min=MIN_LOG_SIGMA)
    standardised = (images - mean) * torch.exp(-log_sigma)
    return -(0.5 * standardised.pow(2) + log_sigma + 0.5 * math.log(2 * math.pi) + LOG_BIN_SCALE)


def value_log_probs(
    likelihood: str, images: torch.Tensor, decoded: torch.Tensor, params: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Per-value log-likelihoods (B, C, H, W); `decoded` is the decoder output, `params` the likelihood's
    learned parameters ({"log_scale": ...} or {"log_sigma": ...})."""
    if likelihood == "logistic":
        return discretised_logistic_log_probs(images, decoded, params["log_scale"])
    if likelihood == "bernoulli":
        return bernoulli_log_probs(images, decoded)
    if likelihood == "gaussian":
        return gaussian_log_probs(images, decoded, params["log_sigma"])
    raise ValueError(f"unknown likelihood {likelihood!r}")


def reconstruction_nll(
    likelihood: str, images: torch.Tensor, decoded: torch.Tensor, params: dict[str, torch.Tensor]
) -> torch.Tensor:
    """(B,) nats: the per-value log-likelihoods summed over pixels and channels, negated."""
    return -value_log_probs(likelihood, images, decoded, params).flatten(1).sum(dim=1)


def likelihood_mean(likelihood: str, decoded: torch.Tensor) -> torch.Tensor:
    """The image a decoder output stands for, in [-1, 1]: the likelihood's mean (bernoulli) or its
    location (logistic, gaussian) — never a noisy per-pixel draw."""
    if likelihood == "bernoulli":
        return torch.sigmoid(decoded) * 2.0 - 1.0
    return decoded.clamp(-1.0, 1.0)


def snap_to_8bit(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> the nearest values of the 8-bit grid (what the likelihoods score)."""
    return images.clamp(-1.0, 1.0).add(1.0).mul(127.5).round().div(127.5).sub(1.0)
