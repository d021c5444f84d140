"""Small-set benchmark: the GAN on a few thousand synthetic RGB images, with and without augmentation,
with transposed-convolution and resize-convolution upsampling.

    python -m bench.small_sets                          # 32x32, 2,000 images, 1,500 steps a variant
    python -m bench.small_sets --size 64 --steps 1000   # 64x64

The set is made in the run (no downloads): coloured circles, squares and triangles of random size,
place and rotation on dark backgrounds, three labelled classes, as a user's own small upload might be.
A genq CNN trained on the same set is the feature network. Each GAN variant trains for the same number
of steps from the same seed; the table gives the Fréchet distance of its samples to held-out images in
the CNN's features (beside the floor of as many training images against them), the final augmentation
probability, and the checkerboard energy: the share of the samples' spectral power (beyond the mean) at
the three highest 2-periodic frequencies, divided by the same share in real images (1 = as in the data;
a transposed-convolution checkerboard raises it). Sample grids go to `--grids` (docs/small_sets).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from worker.engine import api, gan
from worker.engine.evaluation import sample_metrics
from worker.engine.images import grid_png
from worker.engine.imageset import ImageSet, to_uint8, to_unit_range
from worker.engine.runtime import RunContext, configure_threads, tune_allocator

CPU = torch.device("cpu")
COLUMNS = ("fd", "precision", "recall", "checkerboard", "augment_p", "loss_d", "train_seconds")
SHAPES = ("circle", "square", "triangle")
# name -> (diff_augment option, generator upsampling)
VARIANTS: dict[str, tuple[bool | None, str]] = {
    "plain-transposed": (False, "transposed"),
    "ada-transposed": (None, "transposed"),
    "plain-resize": (False, "resize"),
    "ada-resize": (None, "resize"),
    "always-resize": (True, "resize"),
}
AUGMENT_NAMES = {False: "no augmentation", None: "adaptive (ADA)", True: "always (DiffAugment)"}


def shapes(count: int, size: int, seed: int) -> ImageSet:
    """`count` RGB images (uint8 (N, 3, size, size)) of one shape each, labels 0..2 in turn."""
    rng = np.random.default_rng(seed)
    scale = 4  # drawn 4x larger then reduced: smooth (antialiased) edges
    big = size * scale
    images = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        background = tuple(int(v) for v in rng.integers(0, 60, 3))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        colour = tuple(max(v, 120) if j == rng.integers(0, 3) else v for j, v in enumerate(colour))  # bright
        canvas = Image.new("RGB", (big, big), background)
        draw = ImageDraw.Draw(canvas)
        radius = rng.uniform(0.18, 0.38) * big
        cx, cy = rng.uniform(radius, big - radius, 2)
        kind = SHAPES[i % len(SHAPES)]
        if kind == "circle":
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
        else:
            corners = 4 if kind == "square" else 3
            turn = rng.uniform(0, 2 * math.pi)
            points = [
                (cx + radius * math.cos(turn + 2 * math.pi * k / corners),
                 cy + radius * math.sin(turn + 2 * math.pi * k / corners))
                for k in range(corners)
            ]  # fmt: skip
            draw.polygon(points, fill=colour)
        images[i] = np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS))
    labels = torch.arange(count) % len(SHAPES)
    return ImageSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, list(SHAPES), "shapes")


def checkerboard_share(images: torch.Tensor) -> float:
    """Mean share of each image's non-DC spectral power at (S/2, S/2), (S/2, 0) and (0, S/2): the
    frequencies of a pattern that repeats every 2 pixels. uint8 (N, C, S, S)."""
    grey = images.float().mean(dim=1)  # (N, S, S)
    power = torch.fft.fft2(grey - grey.mean(dim=(1, 2), keepdim=True)).abs().pow(2)
    h, w = grey.shape[1:]
    nyquist = power[:, h // 2, w // 2] + power[:, h // 2, 0] + power[:, 0, w // 2]
    return float((nyquist / power.sum(dim=(1, 2)).clamp(min=1e-9)).mean())


def cnn_features(model: api.LoadedModel, images: torch.Tensor) -> torch.Tensor:
    cnn = api.family_module("cnn")
    with torch.inference_mode():
        return torch.cat([cnn.features(model.module, to_unit_range(c)).float() for c in images.split(256)])


def train_gan(data: ImageSet, augment: bool | None, upsample: str, steps: int, seed: int) -> tuple[Any, dict]:
    config = gan.Config.from_options({"max_steps": steps, "seed": seed}, data)
    config = dataclasses.replace(config, diff_augment=augment, upsample=upsample)
    output = gan.train(config, data, RunContext(device=CPU))
    return gan.load(gan.unpack_checkpoint(output.checkpoint, CPU), CPU), output.metrics


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=32, choices=(32, 64))
    parser.add_argument("--images", type=int, default=2000, help="training images")
    parser.add_argument("--test-images", type=int, default=1000, help="held-out images (and samples)")
    parser.add_argument("--steps", type=int, default=1500, help="GAN steps per variant")
    parser.add_argument("--cnn-epochs", type=int, default=20)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    parser.add_argument("--grids", type=Path, default=Path("docs/small_sets"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    print(f"torch threads: {configure_threads(args.threads)}; load average {os.getloadavg()}", flush=True)
    tune_allocator()
    train = shapes(args.images, args.size, args.seed)
    test = shapes(args.test_images, args.size, args.seed + 1)
    started = time.perf_counter()
    ctx = RunContext(device=CPU)
    classifier = api.load(
        api.train("cnn", {"epochs": args.cnn_epochs}, train, ctx, holdout=test).checkpoint, CPU
    )
    accuracy = api.family_module("cnn").accuracy_report(classifier.module, test, list(SHAPES))[0][
        "test_accuracy"
    ]
    print(f"  feature CNN: test accuracy {accuracy:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    real_features = cnn_features(classifier, test.images)
    real_checker = checkerboard_share(test.images)
    floor = sample_metrics(real_features, cnn_features(classifier, train.images[: args.test_images]), 0)
    rows = [{"variant": "real training images (floor)", "fd": floor["fd"], "checkerboard": 1.0}]
    print(f"  {rows[0]}", flush=True)
    args.grids.mkdir(parents=True, exist_ok=True)
    for name in args.variants.split(","):
        augment, upsample = VARIANTS[name]
        started = time.perf_counter()
        model, metrics = train_gan(train, augment, upsample, args.steps, args.seed)
        seconds = time.perf_counter() - started
        labels = [i % len(SHAPES) for i in range(args.test_images)]
        fake = to_uint8(gan.sample(model, list(range(10_000, 10_000 + args.test_images)), labels))
        values = sample_metrics(real_features, cnn_features(classifier, fake), 0)
        row = {
            "variant": f"{AUGMENT_NAMES[augment]}, {upsample} upsampling",
            "fd": values["fd"],
            "precision": values["precision"],
            "recall": values["recall"],
            "checkerboard": checkerboard_share(fake) / real_checker,
            "augment_p": metrics["augment_p"],
            "loss_d": metrics["loss_d"],
            "train_seconds": seconds,
        }
        rows.append(row)
        print(f"  {row}", flush=True)
        (args.grids / f"{args.size}px-{name}.png").write_bytes(grid_png(fake[:24], 8))
    grid = grid_png(test.images[:24], 8)
    (args.grids / f"{args.size}px-real.png").write_bytes(grid)
    print(f"\n{args.images} training images {args.size}x{args.size}, {args.steps} steps a variant\n")
    print(
        "| variant | FD (CNN features) | precision | recall | checkerboard vs real | final p | D loss | s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        cells = [f"{row[k]:.3g}" if k in row else "" for k in COLUMNS]
        print(f"| {row['variant']} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
