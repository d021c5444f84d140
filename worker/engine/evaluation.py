"""Evaluation jobs: how good a trained model is, in numbers a user can compare across models.

GAN / VAE: `num_samples` samples (item i from item_seed(seed, i); conditional models cycle the labels evenly
over the classes) and up to `num_samples` held-out real images go through a frozen CNN (`classifier`); on
its penultimate features we report the Fréchet distance, KID (mean, std), precision and recall (k = 3) and,
beside them, the same metrics between two disjoint halves of the real images: the floor a perfect model
would reach with this many images. Precision and recall use at most 10 000 items of each set. Conditional
models add the classifier's accuracy on their samples; VAEs add the negative ELBO of the real images in
nats. Numbers are comparable only for the same feature network (its checkpoint hash is recorded) and the
same number of samples.

CNN: accuracy, per-class accuracy and the confusion matrix on `real`.
"""

from __future__ import annotations

from typing import Any

import torch

from worker.engine import cnn, metrics, vae
from worker.engine.contract import LoadedModel
from worker.engine.data import convert_channels
from worker.engine.images import resize_images
from worker.engine.imageset import ImageSet, to_unit_range
from worker.engine.latents import item_seed
from worker.engine.runtime import ConfigError, RunContext
from worker.engine.sampling import generate

SAMPLE_CHUNK = 256
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PR_NEIGHBOURS = 3
PR_MAX_ITEMS = 10_000  # precision/recall cost grows with N^2: larger sets are subsampled (seeded)


def _to_classifier_input(images: torch.Tensor, classifier: LoadedModel) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float [-1, 1] at the classifier's channels and size."""
    images = resize_images(convert_channels(images, classifier.channels), classifier.image_size)
    return to_unit_range(images)


def _real_features(classifier: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    chunks = images.split(SAMPLE_CHUNK)
    return torch.cat(
        [cnn.features(classifier.module, _to_classifier_input(c, classifier)).cpu() for c in chunks]
    )


def sample_metrics(real_features: torch.Tensor, fake_features: torch.Tensor, seed: int) -> dict[str, float]:
    """FD, KID (mean, std), precision and recall between two feature sets (N, D)."""
    kid_mean, kid_std = metrics.kid(
        real_features, fake_features, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=seed
    )
    generator = torch.Generator().manual_seed(item_seed(seed, -2))
    real_subset = real_features[torch.randperm(len(real_features), generator=generator)[:PR_MAX_ITEMS]]
    fake_subset = fake_features[torch.randperm(len(fake_features), generator=generator)[:PR_MAX_ITEMS]]
    precision, recall = metrics.precision_recall(real_subset, fake_subset, k=PR_NEIGHBOURS)
    return {
        "fd": metrics.frechet_distance_of_features(real_features, fake_features),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
    }


def evaluate(
    model: LoadedModel,
    classifier: LoadedModel | None,
    real: ImageSet,
    *,
    num_samples: int = 10_000,
    seed: int = 0,
    ctx: RunContext | None = None,
) -> dict[str, Any]:
    """The metrics dict of an evaluation job (JSON-able), see the module docstring: a GAN/VAE's samples
    against `real` (held-out images) in the feature space of `classifier` (a CNN: the API checked the
    family), or a CNN's accuracy on `real`."""
    ctx = ctx or RunContext()
    if model.family == "cnn":
        return _evaluate_classifier(model, real)
    if num_samples < 4 or len(real) < 4:
        raise ConfigError("num_samples: need at least 4 samples and 4 real images")
    if classifier is None:
        raise ConfigError(
            "classifier_id: sample metrics need a cnn trained on the same data as the feature network"
        )

    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(item_seed(seed, -1)))
    held_out = real.subset(order[:num_samples].sort().values)
    real_features = _real_features(classifier, held_out.images)

    seeds = [item_seed(seed, i) for i in range(num_samples)]
    labels = [i % model.num_classes for i in range(num_samples)] if model.num_classes else None
    fake_features, logits = [], []
    for done, chunk in enumerate(generate(model, seeds, labels, chunk_size=SAMPLE_CHUNK, ctx=None), start=1):
        x = _to_classifier_input(torch.from_numpy(chunk).permute(0, 3, 1, 2), classifier)
        fake_features.append(cnn.features(classifier.module, x).cpu())
        if labels is not None:
            logits.append(cnn.classify(classifier.module, x).cpu())
        ctx.report("evaluate", min(done * SAMPLE_CHUNK, num_samples), num_samples + 1)
        ctx.check()

    fake = torch.cat(fake_features)
    half = len(real_features) // 2
    result: dict[str, Any] = {
        "family": model.family,
        "num_samples": num_samples,
        "num_real": len(held_out),
        "seed": seed,
        **sample_metrics(real_features, fake, seed),
        "real_floor": {
            **sample_metrics(real_features[:half], real_features[half : 2 * half], seed),
            "num_per_half": half,
        },
        "feature_network": {
            "version_hash": classifier.version_hash,
            "dimensions": int(fake.shape[1]),
            "class_names": classifier.class_names,
        },
    }
    if labels is not None:
        if classifier.num_classes == model.num_classes:
            result["conditional_accuracy"] = metrics.conditional_accuracy(torch.cat(logits), labels)
        else:
            result["conditional_accuracy_skipped"] = "the classifier and the model have different classes"
    if model.family == "vae":
        images = _at_model_shape(held_out.images, model)
        conditional = model.num_classes and held_out.labels is not None
        result["test_negative_elbo_nats"] = float(
            vae.negative_elbo(model.module, images, held_out.labels if conditional else None)
        )
    ctx.report("evaluate", num_samples + 1, num_samples + 1)
    return result


def _at_model_shape(images: torch.Tensor, model: LoadedModel) -> torch.Tensor:
    return resize_images(convert_channels(images, model.channels), model.image_size)


def _evaluate_classifier(model: LoadedModel, real: ImageSet) -> dict[str, Any]:
    if real.labels is None:
        raise ConfigError("data: evaluating a cnn needs labelled images")
    if real.num_classes != model.num_classes:
        raise ConfigError(f"data: {real.num_classes} classes, but the cnn knows {model.num_classes}")
    images = _at_model_shape(real.images, model)
    report, _ = cnn.accuracy_report(
        model.module, ImageSet(images, real.labels, real.class_names), model.class_names
    )
    return {"family": "cnn", **report}
