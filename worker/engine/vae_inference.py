"""Inference with a trained VAE: labels, prior latents, decoding, sampling, encoding and the ELBO.

Shared by training (final metrics, latent statistics), the evaluation module (`negative_elbo`) and the
edits. Every function works item by item: an item's result never depends on the rest of its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from worker.engine.imageset import to_unit_range
from worker.engine.latents import in_fixed_blocks, latents_for_seeds
from worker.engine.mixture_prior import MixturePrior
from worker.engine.runtime import ConfigError, inference_rows
from worker.engine.vae_loss import (
    gaussian_kl,
    likelihood_mean,
    reconstruction_nll,
    reparameterise,
    snap_to_8bit,
)
from worker.engine.vae_nets import VAE

ELBO_SEED = 0  # the posterior draws of negative_elbo: fixed, so the number is reproducible


def likelihood_params(model: VAE) -> dict[str, torch.Tensor]:
    if model.likelihood == "logistic":
        return {"log_scale": model.log_scale}
    if model.likelihood == "gaussian":
        return {"log_sigma": model.log_sigma}
    return {}


def label_tensor(model: VAE, labels: Sequence[int] | torch.Tensor | None, count: int) -> torch.Tensor | None:
    """(count,) class indices for a conditional model (None for unconditional ones); validated."""
    if not model.num_classes:
        return None
    if labels is None:
        raise ConfigError("labels: required for a conditional vae")
    tensor = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
    if len(tensor) == 1 and count != 1:
        tensor = tensor.expand(count)
    if len(tensor) != count:
        raise ConfigError(f"labels: {len(tensor)} given for {count} items")
    if count and (tensor.min() < 0 or tensor.max() >= model.num_classes):
        raise ConfigError(f"labels: must be in [0, {model.num_classes})")
    return tensor


def prior_latents(
    model: VAE, seeds: Sequence[int], truncation: float = 1.0, temperature: float = 1.0
) -> torch.Tensor:
    """(B, D) latents on CPU, row i from seeds[i] alone: the fitted mixture when the model has one,
    else latents_for_seeds(...) * temperature."""
    prior: MixturePrior | None = model.prior
    if prior is not None:
        return prior.latents(seeds, truncation, temperature)
    return latents_for_seeds(seeds, model.latent_dim, truncation) * temperature


def decode_mean(model: VAE, latents: torch.Tensor, label_vectors: torch.Tensor | None = None) -> torch.Tensor:
    """Latents -> (B, C, H, W) float32 images in [-1, 1] (the likelihood's mean)."""
    device = next(model.parameters()).device
    if label_vectors is not None:
        label_vectors = label_vectors.to(device)
    decoded = model.decode(latents.to(device), label_vectors).float()
    return likelihood_mean(model.likelihood, decoded)


@torch.no_grad()
def sample(
    model: VAE,
    seeds: Sequence[int],
    labels: Sequence[int] | None,
    *,
    truncation: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(B, C, H, W) float in [-1, 1]; item i depends only on seeds[i] and labels[i], bit for bit (GroupNorm
    only, eval mode, and fixed-size decoder passes: latents.in_fixed_blocks). A conditional model given no
    labels uses label seed % num_classes."""
    if model.num_classes and labels is None:
        labels = [int(s) % model.num_classes for s in seeds]
    y = label_tensor(model, labels, len(seeds))
    latents = prior_latents(model, seeds, truncation, temperature)
    return in_fixed_blocks(lambda z, v: decode_mean(model, z, v), latents, model.label_vectors(y))


def as_model_input(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """uint8 or [-1, 1] float images, (N, C, H, W) or (N, H, W, C) -> float (N, C, H, W) on the 8-bit grid."""
    if images.ndim == 4 and images.shape[1] != model.channels and images.shape[-1] == model.channels:
        images = images.permute(0, 3, 1, 2)
    if images.ndim != 4 or tuple(images.shape[1:]) != (model.channels, model.image_size, model.image_size):
        expected = (model.channels, model.image_size, model.image_size)
        raise ConfigError(f"images: expected (N, *{expected}), got {tuple(images.shape)}")
    return to_unit_range(images) if images.dtype == torch.uint8 else snap_to_8bit(images.float())


@torch.no_grad()
def elbo_terms(
    model: VAE, images: torch.Tensor, labels: Sequence[int] | torch.Tensor | None = None
) -> dict[str, float]:
    """Mean nats per image: {"negative_elbo", "recon", "kl"} with beta = 1 and one posterior draw per image
    from a generator seeded ELBO_SEED (the same numbers for the same inputs, whatever the chunking).
    A conditional model given no labels scores log mean_y exp(ELBO(x | y)), itself a bound on log p(x)."""
    x_all = as_model_input(model, images)
    count = len(x_all)
    if count == 0:
        raise ConfigError("images: none given")
    device = next(model.parameters()).device
    noise = torch.randn(count, model.latent_dim, generator=torch.Generator().manual_seed(ELBO_SEED))
    given = label_tensor(model, labels, count) if labels is not None else None
    candidates = range(model.num_classes) if model.num_classes and given is None else [None]
    recon_sum = kl_sum = nelbo_sum = 0.0
    rows = inference_rows(device)
    for start in range(0, count, rows):
        x = x_all[start : start + rows].to(device)
        eps = noise[start : start + rows].to(device)
        per_label = []
        for candidate in candidates:
            if given is not None:
                y = given[start : start + rows]
            else:
                y = None if candidate is None else torch.full((len(x),), candidate, dtype=torch.long)
            vectors = model.label_vectors(y)
            mean, logvar = model.encode(x, vectors)
            z = reparameterise(mean.float(), logvar.float(), eps)
            decoded = model.decode(z, vectors).float()
            recon = reconstruction_nll(model.likelihood, x, decoded, likelihood_params(model))
            per_label.append((recon, gaussian_kl(mean.float(), logvar.float())))
        recon = torch.stack([r for r, _ in per_label])  # (L, b)
        kl = torch.stack([k for _, k in per_label])
        nelbo = -(torch.logsumexp(-(recon + kl), dim=0) - math.log(len(per_label)))
        best = (recon + kl).argmin(dim=0, keepdim=True)  # the terms reported: the best label's
        recon_sum += recon.gather(0, best).sum().item()
        kl_sum += kl.gather(0, best).sum().item()
        nelbo_sum += nelbo.sum().item()
    return {"negative_elbo": nelbo_sum / count, "recon": recon_sum / count, "kl": kl_sum / count}


def negative_elbo(
    model: VAE, images: torch.Tensor, labels: Sequence[int] | torch.Tensor | None = None
) -> float:
    """Mean negative ELBO in nats per image (beta = 1, one fixed-seed posterior draw) of uint8 or [-1, 1]
    images; the evaluation module's test loss."""
    return elbo_terms(model, images, labels)["negative_elbo"]


@torch.no_grad()
def encode_means(model: VAE, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """(N, D) posterior means on CPU for uint8 (N, C, H, W) images."""
    device = next(model.parameters()).device
    means, rows = [], inference_rows(device)
    for start in range(0, len(images), rows):
        x = to_unit_range(images[start : start + rows].to(device))
        y = labels[start : start + rows] if labels is not None and model.num_classes else None
        means.append(model.encode(x, model.label_vectors(y))[0].float().cpu())
    return torch.cat(means) if means else torch.empty(0, model.latent_dim)


def class_means(latents: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, D) mean latent per class; a class with no images gets the overall mean."""
    overall = latents.mean(dim=0)
    rows = [latents[labels == k].mean(dim=0) if (labels == k).any() else overall for k in range(num_classes)]
    return torch.stack(rows)
