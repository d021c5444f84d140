"""Quality benchmark: each genq family trained on Fashion-MNIST within a stated budget, printed beside its
pytorch/examples baseline trained in the same run with the same budget (bench/baselines.py).

    python -m bench.quality                       # everything, the budgets below (about an hour on 2 cores)
    python -m bench.quality --families gan --gan-seconds 120 --samples 2000   # a quick look

- CNN: test accuracy of genq's classifier and of examples/mnist's, each with `--cnn-seconds` of wall time.
- GAN: genq's conditional GAN and examples/dcgan, each trained for `--gan-seconds`; Fréchet distance, KID,
  precision/recall of `--samples` samples against as many test images, and genq's conditional accuracy.
- VAE: genq's VAE and examples/vae's 784-400-20 MLP VAE, each for `--vae-epochs` epochs. Test loss is
  compared like for like under the baseline's Bernoulli likelihood (a genq VAE trained with
  likelihood=bernoulli); sample quality with genq's default (discretised logistic) VAE.

All sample metrics use genq's CNN from the same run as the frozen feature network; the real-vs-real floor
(as many training images against the test images) is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch

from bench import baselines
from worker.engine import api
from worker.engine.data import load_builtin
from worker.engine.evaluation import sample_metrics
from worker.engine.imageset import ImageSet, to_unit_range
from worker.engine.latents import item_seed
from worker.engine.runtime import RunContext, configure_threads, tune_allocator

UNBOUNDED_EPOCHS = 1000
UNBOUNDED_STEPS = 1_000_000


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


class FeatureNet:
    """genq's trained CNN, frozen: penultimate features and class predictions of uint8 images."""

    def __init__(self, model: api.LoadedModel) -> None:
        self.model = model
        self.cnn = api.family_module("cnn")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cnn.features(self.model.module, to_unit_range(c)) for c in images.split(500)])

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        logits = [self.cnn.classify(self.model.module, to_unit_range(c)) for c in images.split(500)]
        return torch.cat(logits).argmax(1)


def genq_samples(model: api.LoadedModel, count: int, seed: int = 0) -> tuple[torch.Tensor, list[int] | None]:
    """uint8 (count, C, H, W) from genq's generate(), labels cycled over the classes when conditional."""
    seeds = [item_seed(seed, i) for i in range(count)]
    labels = [i % model.num_classes for i in range(count)] if model.num_classes else None
    chunks = api.generate(model, seeds, labels, chunk_size=500)
    return torch.cat([torch.from_numpy(c).permute(0, 3, 1, 2) for c in chunks]), labels


def row(name: str, values: dict[str, Any]) -> None:
    cells = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(f"  {name:<28} {cells}", flush=True)


def bench_cnn(train: ImageSet, test: ImageSet, seconds: float) -> tuple[api.LoadedModel, dict[str, Any]]:
    print(f"CNN: {seconds:.0f} s of training each", flush=True)
    ctx = RunContext(max_seconds=seconds, device=torch.device("cpu"))
    # Epochs beyond reach: the time budget ends both runs (the schedule anneals within the budget).
    options = {"epochs": UNBOUNDED_EPOCHS}
    output, genq_time = timed(lambda: api.train("cnn", options, train, ctx, holdout=test))
    model = api.load(output.checkpoint, torch.device("cpu"))
    genq_row = {"test_accuracy": output.metrics["test_accuracy"], "seconds": genq_time}
    assert train.labels is not None and test.labels is not None
    baseline, base_time = timed(
        lambda: baselines.train_mnist_cnn(train.images, train.labels, seconds=seconds)
    )
    base_row = {
        "test_accuracy": baselines.mnist_cnn_accuracy(baseline, test.images, test.labels),
        "seconds": base_time,
    }
    row("genq cnn", genq_row)
    row("examples/mnist cnn", base_row)
    return model, {"genq": genq_row, "baseline": base_row}


def bench_gan(
    train: ImageSet, real: torch.Tensor, features: FeatureNet, seconds: float, samples: int
) -> dict[str, Any]:
    print(f"GAN: {seconds:.0f} s of training each, {samples} samples", flush=True)
    real_features = features.features(real)
    ctx = RunContext(max_seconds=seconds, device=torch.device("cpu"))
    # Steps beyond reach: the time budget ends both runs, so they train for the same wall time.
    output, genq_time = timed(lambda: api.train("gan", {"max_steps": UNBOUNDED_STEPS}, train, ctx))
    model = api.load(output.checkpoint, torch.device("cpu"))
    fake, labels = genq_samples(model, samples)
    genq_row = {**sample_metrics(real_features, features.features(fake), 0), "seconds": genq_time}
    if labels is not None:
        genq_row["conditional_accuracy"] = (
            (features.predict(fake) == torch.tensor(labels)).float().mean().item()
        )
    (net_g, steps), base_time = timed(lambda: baselines.train_dcgan(train.images, seconds))
    base_fake = baselines.sample_dcgan(net_g, samples)
    base_row = {**sample_metrics(real_features, features.features(base_fake), 0), "seconds": base_time}
    base_row["steps"] = steps
    genq_row["steps"] = output.metrics.get("steps")
    row("genq gan (conditional)", genq_row)
    row("examples/dcgan", base_row)
    print(f"  FD ratio genq/baseline: {genq_row['fd'] / base_row['fd']:.3f} (target <= 0.5)", flush=True)
    return {"genq": genq_row, "baseline": base_row}


def bench_vae(
    train: ImageSet, test: ImageSet, real: torch.Tensor, features: FeatureNet, epochs: int, samples: int
) -> dict[str, Any]:
    print(f"VAE: {epochs} epochs each, {samples} samples", flush=True)
    real_features = features.features(real)
    cpu = torch.device("cpu")
    output, genq_time = timed(
        lambda: api.train("vae", {"epochs": epochs}, train, RunContext(device=cpu), test)
    )
    model = api.load(output.checkpoint, cpu)
    fake, _ = genq_samples(model, samples)
    genq_row = {
        **sample_metrics(real_features, features.features(fake), 0),
        "test_nelbo_nats": api.family_module("vae").negative_elbo(model.module, test.images, test.labels),
        "seconds": genq_time,
    }
    bernoulli, bern_time = timed(
        lambda: api.train(
            "vae", {"epochs": epochs, "likelihood": "bernoulli"}, train, RunContext(device=cpu), test
        )
    )
    bern_model = api.load(bernoulli.checkpoint, cpu)
    bern_row = {
        "test_bernoulli_nelbo_nats": api.family_module("vae").negative_elbo(
            bern_model.module, test.images, test.labels
        ),
        "seconds": bern_time,
    }
    (baseline, _), base_time = timed(lambda: baselines.train_mlp_vae(train.images, epochs=epochs))
    base_fake = baselines.sample_mlp_vae(baseline, samples)
    base_row = {
        **sample_metrics(real_features, features.features(base_fake), 0),
        "test_bernoulli_nelbo_nats": baselines.mlp_vae_test_loss(baseline, test.images),
        "seconds": base_time,
    }
    row("genq vae (logistic)", genq_row)
    row("genq vae (bernoulli)", bern_row)
    row("examples/vae mlp", base_row)
    print(
        f"  test loss genq/baseline (Bernoulli nats): "
        f"{bern_row['test_bernoulli_nelbo_nats']:.1f} vs {base_row['test_bernoulli_nelbo_nats']:.1f}; "
        f"FD ratio {genq_row['fd'] / base_row['fd']:.3f} (target <= 0.7)",
        flush=True,
    )
    return {"genq": genq_row, "genq_bernoulli": bern_row, "baseline": base_row}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default="cnn,gan,vae")
    parser.add_argument("--cnn-seconds", type=float, default=600)
    parser.add_argument("--gan-seconds", type=float, default=600)
    parser.add_argument("--vae-epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--train-limit", type=int, default=None, help="use the first N training images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    families = set(args.families.split(","))
    print(f"torch threads: {configure_threads(args.threads)}", flush=True)
    tune_allocator()  # as in worker processes

    train, test = load_builtin("fashion-mnist", "train"), load_builtin("fashion-mnist", "test")
    if args.train_limit:
        train = train.subset(torch.arange(args.train_limit))
    real = test.images[: args.samples]
    results: dict[str, Any] = {"samples": len(real), "train_images": len(train)}

    # The feature network is genq's CNN from this run, so the CNN is always trained.
    classifier, results["cnn"] = bench_cnn(train, test, args.cnn_seconds)
    features = FeatureNet(classifier)
    floor_real = train.images[
        torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: len(real)]
    ]
    results["real_floor"] = sample_metrics(features.features(real), features.features(floor_real), 0)
    row("real-vs-real floor", results["real_floor"])
    if "gan" in families:
        results["gan"] = bench_gan(train, real, features, args.gan_seconds, args.samples)
    if "vae" in families:
        results["vae"] = bench_vae(train, test, real, features, args.vae_epochs, args.samples)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return results


if __name__ == "__main__":
    main()
