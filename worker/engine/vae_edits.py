"""Edits with a trained VAE: reconstruct, interpolate, inpaint, class_swap, attribute, invert.

Everything goes through the latent space: the encoder's posterior mean is an image's latent, the decoder's
likelihood mean is the image a latent stands for. Inpainting refines the encoder's latent by gradient
descent on the known pixels' likelihood plus the prior; class edits change the label a conditional
decoder is given, or move along the difference of two classes' mean latents (stored at training time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from worker.engine.contract import EditOutput, EditRequest
from worker.engine.imageset import to_uint8, to_unit_range
from worker.engine.latents import blend_close_fits, masked_psnr, slerp
from worker.engine.runtime import ConfigError, RunContext
from worker.engine.vae_inference import decode_mean, label_tensor, likelihood_params, prior_latents
from worker.engine.vae_loss import (
    gaussian_kl,
    likelihood_mean,
    reconstruction_nll,
    reparameterise,
    value_log_probs,
)
from worker.engine.vae_nets import VAE

Classify = Callable[[torch.Tensor], torch.Tensor]
FIT_LR = 0.05  # Adam on the latent: posterior means are O(1), so a few hundred small steps suffice
ITERATIONS_PER_STEP = 10  # request.steps scales latent fits (reconstruct, inpaint): 8 -> 80 Adam iterations
INPAINT_STARTS = 4  # latents fitted per image when inpainting, the close fits averaged (8: no gain)
MIN_FIT_VARIANCE = 1e-4  # a start that already fits within 1/100 of the range: sigma no smaller than that


def edit(model: Any, request: EditRequest, classify: Classify | None, ctx: RunContext | None) -> EditOutput:
    """Dispatch on request.operation; unsupported operations raise ConfigError naming the operation."""
    vae: VAE = getattr(model, "module", model)  # a LoadedModel or the VAE itself
    operations = {
        "reconstruct": reconstruct,
        "invert": invert,
        "interpolate": interpolate,
        "inpaint": inpaint,
        "class_swap": class_swap,
        "attribute": attribute,
    }
    if request.operation not in operations:
        raise ConfigError(f"operation: {request.operation} not supported for vae")
    ctx = ctx or RunContext(device=_device(vae))
    ctx.check()
    with torch.no_grad():
        return operations[request.operation](vae, request, classify, ctx)


# ---------------------------------------------------------------------------------------------------
# Inputs and outputs


def _device(model: VAE) -> torch.device:
    return next(model.parameters()).device


def source_images(model: VAE, request: EditRequest, count: int | None = None) -> torch.Tensor:
    """request.images (N, H, W, C) uint8 -> (N, C, H, W) float in [-1, 1] on the model's device."""
    if request.images is None:
        raise ConfigError(f"images: required for {request.operation}")
    images = torch.as_tensor(np.asarray(request.images))
    if images.ndim == 3:
        images = images.unsqueeze(-1)
    size, channels = model.image_size, model.channels
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (size, size, channels):
        expected = f"uint8 (N, {size}, {size}, {channels})"
        raise ConfigError(f"images: expected {expected}, got {images.dtype} {tuple(images.shape)}")
    if len(images) == 0 or (count is not None and len(images) != count):
        raise ConfigError(f"images: {request.operation} needs {count or 'at least one'} image(s)")
    return to_unit_range(images.permute(0, 3, 1, 2).contiguous()).to(_device(model))


def to_output(images: torch.Tensor) -> np.ndarray:
    """(M, C, H, W) float in [-1, 1] -> (M, H, W, C) uint8."""
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


def class_name(model: VAE, label: int) -> str:
    return model.class_names[label] if 0 <= label < len(model.class_names) else f"class {label}"


def psnr(restored: torch.Tensor, original: torch.Tensor) -> float:
    return masked_psnr(restored, original, torch.ones(original.shape[-2:], dtype=torch.bool))


def target_class_rate(
    classify: Classify | None, images: torch.Tensor, targets: torch.Tensor
) -> dict[str, float]:
    """{"target_class_rate": share of images the classifier assigns to their target}; {} without one."""
    if classify is None:
        return {}
    predicted = classify(images).argmax(dim=1).cpu()
    return {"target_class_rate": (predicted == targets.cpu()).float().mean().item()}


def target_labels(model: VAE, request: EditRequest, count: int, classes: int) -> torch.Tensor:
    if request.target_labels is None or len(request.target_labels) == 0:
        raise ConfigError(f"target_labels: required for {request.operation}")
    targets = torch.as_tensor(list(request.target_labels), dtype=torch.long)
    targets = targets.expand(count) if len(targets) == 1 else targets
    if len(targets) != count or targets.min() < 0 or targets.max() >= classes:
        raise ConfigError(f"target_labels: one (or one per image) in [0, {classes}) needed")
    return targets


def label_scores(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """(K, N) on CPU: each image's negative ELBO at the posterior mean under each class of a conditional
    model (lower is likelier)."""
    scores = []
    for label in range(model.num_classes):
        vectors = model.label_vectors(torch.full((len(images),), label, dtype=torch.long))
        mean, logvar = model.encode(images, vectors)
        decoded = model.decode(mean, vectors).float()
        nll = reconstruction_nll(model.likelihood, images, decoded, likelihood_params(model))
        scores.append(nll + gaussian_kl(mean.float(), logvar.float()))
    return torch.stack(scores).cpu()


def infer_labels(model: VAE, images: torch.Tensor) -> torch.Tensor:
    """For a conditional model given no labels: each image's most likely class (lowest negative ELBO at
    the posterior mean). (N,) on CPU."""
    return label_scores(model, images).argmin(dim=0)


def source_labels(model: VAE, request: EditRequest, images: torch.Tensor) -> torch.Tensor | None:
    """Labels the encoder is given: request.labels, or inferred; None for unconditional models."""
    if not model.num_classes:
        return None
    if request.labels is not None and len(request.labels):
        return label_tensor(model, request.labels, len(images))
    return infer_labels(model, images)


def encode(model: VAE, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """(N, D) posterior means."""
    return model.encode(images, model.label_vectors(labels))[0].float()


# ---------------------------------------------------------------------------------------------------
# Operations


def reconstruct(model: VAE, request: EditRequest, classify: Classify | None, ctx: RunContext) -> EditOutput:
    """Decode each source's latent: the encoder's posterior mean, refined by Adam (steps * 10
    iterations) on the image's squared error plus the prior (_fit_latents). The encoder answers in
    one pass for every image at once, so its guess misses each one's best latent (the amortisation
    gap); a short per-image fit from that guess closes much of it. steps 0 (not offered by the API)
    keeps the encoder's latent as it is. (Measured: BENCHMARKS.md, "Editing, 2026-12-02".)"""
    x = source_images(model, request)
    labels = source_labels(model, request, x)
    vectors = model.label_vectors(labels)
    start = encode(model, x, labels)
    everything = torch.ones_like(x)
    iterations = ITERATIONS_PER_STEP * int(request.steps)
    z = _fit_latents(model, x, everything, start, vectors, iterations, ctx, objective="squared")
    out = decode_mean(model, z, vectors)
    captions = [f"reconstruction of source {i}" for i in range(len(x))]
    metrics = {"psnr": psnr(out, x)}
    if request.steps > 0:
        metrics["psnr_encoder"] = psnr(decode_mean(model, start, vectors), x)
    return EditOutput(to_output(out), captions, metrics)


def invert(model: VAE, request: EditRequest, classify: Classify | None, ctx: RunContext) -> EditOutput:
    """A VAE inverts by encoding (and refining the latent): as reconstruct."""
    result = reconstruct(model, request, classify, ctx)
    result.captions = [f"source {i} decoded from its encoder latent" for i in range(len(result.images))]
    return result


def interpolate(model: VAE, request: EditRequest, classify: Classify | None, ctx: RunContext) -> EditOutput:
    """request.steps frames between two seeds' prior latents (slerp for N(0, I) latents, a straight line
    under a fitted mixture) or two source images' posterior means (a straight line)."""
    frames = max(2, int(request.steps))
    t = torch.linspace(0.0, 1.0, frames)
    if request.seeds is not None and len(request.seeds) > 0:
        if len(request.seeds) != 2:
            raise ConfigError("seeds: interpolate needs exactly two")
        ends = prior_latents(model, request.seeds)
        labels = None
        if model.num_classes:
            given = request.labels if request.labels else [int(s) % model.num_classes for s in request.seeds]
            labels = label_tensor(model, given, 2)
        spherical = model.prior is None
        what = f"seeds {request.seeds[0]} and {request.seeds[1]}"
    else:
        x = source_images(model, request, count=2)
        labels = source_labels(model, request, x)
        ends = encode(model, x, labels).cpu()
        spherical = False
        what = "sources 0 and 1"
    path = slerp(ends[0], ends[1], t) if spherical else (1 - t[:, None]) * ends[0] + t[:, None] * ends[1]
    vectors = None
    if labels is not None:
        pair = model.label_vectors(labels).cpu()  # (2, E): the label blends along with the latent
        vectors = (1 - t[:, None]) * pair[0] + t[:, None] * pair[1]
    out = decode_mean(model, path, vectors)
    captions = [f"frame {j + 1}/{frames} between {what} (t={t[j]:.2f})" for j in range(frames)]
    return EditOutput(to_output(out), captions, {})


def inpaint(model: VAE, request: EditRequest, classify: Classify | None, ctx: RunContext) -> EditOutput:
    """Fill the masked pixels. The image with its hole filled by the known pixels' mean is encoded;
    INPAINT_STARTS latents per image start from there (see inpaint_starts), Adam on each (steps * 10
    iterations) maximises the known pixels' likelihood plus the N(0, I) prior, and the hole takes the
    mean of the fits that match the known pixels about as well as the best (latents.blend_close_fits).
    Known pixels are kept as they were."""
    x = source_images(model, request)
    if request.mask is None:
        raise ConfigError("mask: required for inpaint")
    mask = torch.as_tensor(np.asarray(request.mask)).bool()
    if tuple(mask.shape) != (model.image_size, model.image_size):
        raise ConfigError(f"mask: expected ({model.image_size}, {model.image_size}), got {tuple(mask.shape)}")
    missing = mask.to(x.device).expand_as(x)
    known = (~missing).float()
    fill = known_mean(x, known)  # (N,)
    start_images = torch.where(missing, fill[:, None, None, None], x)
    starts, labels = inpaint_starts(model, request, start_images)  # (R, N, D), (R, N) or None
    count, n = starts.shape[:2]
    vectors = model.label_vectors(None if labels is None else labels.reshape(-1))  # (R*N, E): start-major
    iterations = ITERATIONS_PER_STEP * int(request.steps)
    flat = starts.reshape(count * n, -1)
    known_all = known.repeat(count, 1, 1, 1)
    # The model's likelihood, not squared error as for reconstruct: measured, it fills the hole better.
    z = _fit_latents(model, x.repeat(count, 1, 1, 1), known_all, flat, vectors, iterations, ctx, "likelihood")
    fills = decode_mean(model, z, vectors)  # (R*N, C, H, W)
    errors = known_mean((fills - x.repeat(count, 1, 1, 1)).pow(2), known_all).view(count, n)
    fills = fills.view(count, *x.shape)  # (R, N, C, H, W)
    out = torch.where(missing, blend_close_fits(fills, errors), x)
    first = decode_mean(model, starts[0], None if vectors is None else vectors[:n])
    metrics = {
        "masked_psnr": masked_psnr(out, x, mask),
        "masked_psnr_encoder": masked_psnr(torch.where(missing, first, x), x, mask),
    }
    return EditOutput(to_output(out), [f"source {i} inpainted" for i in range(len(x))], metrics)


def inpaint_starts(
    model: VAE, request: EditRequest, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """INPAINT_STARTS start latents per image, start-major (R, N, D), and their labels (R, N) (None for
    an unconditional model). A conditional model given no labels tries its likeliest classes (by ELBO),
    one start each, since a hole can hide what tells classes apart; the remaining starts are draws
    from the encoder's posterior (seeded by request.seed) around the first class's mean, a spread of
    completions the prior finds plausible. Start 0 is the encoder's mean under the likeliest class."""
    if model.num_classes and not (request.labels is not None and len(request.labels)):
        ranked = label_scores(model, images).argsort(dim=0)  # (K, N)
        tried = ranked[: min(INPAINT_STARTS, model.num_classes)]
    else:
        given = source_labels(model, request, images)
        tried = None if given is None else given[None]
    first = None if tried is None else tried[0]
    labels = [] if tried is None else list(tried)
    means = [encode(model, images, label) for label in labels] or [encode(model, images, None)]
    mean, logvar = model.encode(images, model.label_vectors(first))
    noise = torch.Generator().manual_seed(int(request.seed))
    while len(means) < INPAINT_STARTS:
        eps = torch.randn(mean.shape, generator=noise).to(mean.device)
        means.append(reparameterise(mean.float(), logvar.float(), eps))
        if first is not None:
            labels.append(first)
    return torch.stack(means), None if first is None else torch.stack(labels)


def _fit_latents(
    model: VAE,
    x: torch.Tensor,
    known: torch.Tensor,
    start: torch.Tensor,
    vectors: torch.Tensor | None,
    iterations: int,
    ctx: RunContext,
    objective: str,
) -> torch.Tensor:
    """Adam on (N, D) latents from `start`: -log p(known pixels | z) - log N(z; 0, I), where p is
    - "likelihood": the model's own pixel likelihood;
    - "squared": the decoded image (the likelihood's mean) plus Gaussian noise of each image's own
      sigma, the RMS error of its start on the known pixels, held fixed: a squared-error fit. A
      discretised logistic with per-pixel scales forgives the pixels it is unsure of, the edges a
      reconstruction most needs; squared error weighs every pixel as PSNR does.
    Items are independent (each loss term involves only its own z, and Adam's update is per
    coordinate). Works when the caller runs under torch.inference_mode too: the tensors autograd needs
    are made outside it."""
    params = likelihood_params(model)
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            x, known = x.clone(), known.clone()
            vectors = vectors.clone() if vectors is not None else None
            z = start.clone().requires_grad_(True)
            with torch.no_grad():
                first = likelihood_mean(model.likelihood, model.decode(z, vectors).float())
                variance = known_mean(first.sub(x).pow(2), known).clamp(min=MIN_FIT_VARIANCE)  # (N,)
            optimizer = torch.optim.Adam([z], lr=FIT_LR)
            for i in range(iterations):
                decoded = model.decode(z, vectors).float()
                if objective == "likelihood":
                    log_probs = value_log_probs(model.likelihood, x, decoded, params) * known
                    fit = -log_probs.flatten(1).sum(1)
                else:
                    squared = (likelihood_mean(model.likelihood, decoded) - x).pow(2) * known
                    fit = squared.flatten(1).sum(1) / (2 * variance)
                loss = fit.sum() + 0.5 * z.pow(2).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                ctx.report("edit", i + 1, iterations, loss=loss.item() / len(x))
                ctx.check()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return z.detach()


def known_mean(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """(N,) per-image mean of `values` (N, C, H, W) over the pixels where `known` (N, C, H, W) is 1."""
    return (values * known).flatten(1).sum(1) / known.flatten(1).sum(1).clamp(min=1.0)


def class_swap(model: VAE, request: EditRequest, classify: Classify | None, ctx: RunContext) -> EditOutput:
    """Conditional models: encode with the source label, decode with the target label the latent moved
    by the difference of the two classes' mean latents. A latent that kept class information (the
    encoder is not forced to leave it all to the label) would otherwise pull the output back toward
    the source class; where the latents carry none, the class means coincide and the move is nil."""
    if not model.num_classes:
        raise ConfigError("operation: class_swap needs a conditional vae (use attribute for this one)")
    x = source_images(model, request)
    labels = source_labels(model, request, x)
    assert labels is not None
    targets = target_labels(model, request, len(x), model.num_classes)
    z = encode(model, x, labels)
    means = model.class_latent_means
    if means is not None:
        z = z + (means[targets] - means[labels]).to(z.device)
    out = decode_mean(model, z, model.label_vectors(targets))
    captions = [
        f"source {i} ({class_name(model, int(s))}) as {class_name(model, int(t))}"
        for i, (s, t) in enumerate(zip(labels.tolist(), targets.tolist(), strict=True))
    ]
    return EditOutput(to_output(out), captions, target_class_rate(classify, out, targets))


def attribute(model: VAE, request: EditRequest, classify: Classify | None, ctx: RunContext) -> EditOutput:
    """Move each latent by strength * (mean latent of the target class - mean latent of the source class);
    a conditional decoder's label embedding moves the same fraction from source to target."""
    means = model.class_latent_means
    if means is None:
        raise ConfigError("operation: attribute needs a vae trained on labelled data")
    x = source_images(model, request)
    targets = target_labels(model, request, len(x), len(means))
    labels = source_labels(model, request, x)
    if labels is None:  # unconditional: the given labels, else the classifier's, else the nearest class
        if request.labels is not None and len(request.labels):
            labels = torch.as_tensor(list(request.labels), dtype=torch.long)
            labels = labels.expand(len(x)).clone() if len(labels) == 1 else labels
            if len(labels) != len(x):
                raise ConfigError(f"labels: {len(labels)} given for {len(x)} images")
        elif classify is not None:
            labels = classify(x).argmax(dim=1).cpu()
        else:
            labels = torch.cdist(encode(model, x, None).cpu(), means).argmin(dim=1)
        if labels.min() < 0 or labels.max() >= len(means):
            raise ConfigError(f"labels: must be in [0, {len(means)})")
    strength = float(request.strength)
    z = encode(model, x, labels).cpu()
    z = z + strength * (means[targets] - means[labels])
    vectors = None
    if model.num_classes:
        source_vectors, target_vectors = model.label_vectors(labels), model.label_vectors(targets)
        vectors = source_vectors + strength * (target_vectors - source_vectors)
    out = decode_mean(model, z, vectors)
    captions = [
        f"source {i} ({class_name(model, int(s))}) moved {strength:+.2f} toward {class_name(model, int(t))}"
        for i, (s, t) in enumerate(zip(labels.tolist(), targets.tolist(), strict=True))
    ]
    return EditOutput(to_output(out), captions, target_class_rate(classify, out, targets))
