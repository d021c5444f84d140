"""Editing benchmark: every edit operation of the GAN and the VAE beside a simple baseline, on
Fashion-MNIST test images the models never saw.

    python -m bench.editing                 # trains the three models (or reuses --cache): ~15 min on 2 cores
    python -m bench.editing --images 64     # fewer test images per operation

Models: genq's CNN (the judge: class predictions and penultimate features), GAN and VAE, trained on the
training split with their default options under a time cap, and kept in `--cache` so a rerun skips
training. Operations and baselines (same test images, same masks, in the same run):

- reconstruct / invert: PSNR and SSIM (scikit-image) against the input, beside the nearest training image.
- inpaint, with centre, random-box and half-image masks: PSNR over the masked pixels, beside filling the
  hole with the training set's mean image and with the training image closest on the known pixels.
- class swap: the share of outputs the CNN puts in the target class, and the feature-space distance to
  the source, beside a random training image of the target class (which hits the class by definition
  but keeps nothing of the source).
- attribute moves and interpolation: the CNN's class-probability path along the frames: monotone (the
  target's probability never falls by more than 0.05 from one frame to the next), no detour (no third
  class ever wins a frame), and the mean step in feature space (smoothness; beside a cross-fade of the
  two end images in pixel space).

Targets (issue 13): inpainting beats both baselines on masked PSNR for every mask; class swaps hit the
target class >= 80 % while staying closer to the source than a random target-class image; the VAE
reconstructs at >= 20 dB PSNR.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from worker.engine import api
from worker.engine.data import load_builtin
from worker.engine.imageset import ImageSet, to_unit_range
from worker.engine.runtime import RunContext, configure_threads, tune_allocator

CPU = torch.device("cpu")
OPERATIONS = ("reconstruct", "inpaint", "class_swap", "attribute", "interpolate")
DEFAULT_CACHE = Path(os.environ.get("GENQ_BENCH_CACHE", "/tmp/genq-bench-editing"))
# family -> (options, seconds cap): the defaults a user gets but for fewer steps, so that the bench stays
# within minutes on a busy 2-core machine; the cap only guards against a far slower one.
MODELS: dict[str, tuple[dict[str, Any], float]] = {
    "cnn": ({"epochs": 3}, 150.0),
    "gan": ({"max_steps": 1200}, 3600.0),
    "vae": ({"max_steps": 600}, 3600.0),
}


def checkpoint_path(family: str, cache: Path) -> Path:
    """Where the checkpoint of `family` trained with MODELS' options and cap is kept."""
    options, seconds = MODELS[family]
    name = "-".join([family, *(f"{k}{v}" for k, v in sorted(options.items())), f"{seconds:g}s"]) + ".ckpt"
    return cache / name


def trained_model(family: str, train: ImageSet, test: ImageSet, cache: Path) -> api.LoadedModel:
    """genq's model of `family` trained on `train` with MODELS' options and cap, or the cached one."""
    options, seconds = MODELS[family]
    path = checkpoint_path(family, cache)
    if not path.exists():
        started = time.perf_counter()
        ctx = RunContext(max_seconds=seconds, device=CPU)
        module = api.family_module(family)
        config = module.Config.from_options(options, train)
        if family == "vae":  # closing statistics and metrics on 2,000 images, not 10,000 (a busy CPU)
            config = dataclasses.replace(config, eval_images=2000, stats_images=2000)
        output = module.train(config, train, ctx, test)
        cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(output.checkpoint)
        kept = {k: v for k, v in output.metrics.items() if isinstance(v, int | float)}
        print(f"  trained {family} in {time.perf_counter() - started:.0f} s: {kept}", flush=True)
    return api.load(path.read_bytes(), CPU)


# ---------------------------------------------------------------------------------------------------
# Measures (uint8 NHWC numpy arrays in, as edits return them)


def psnr_ssim(restored: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean per-image PSNR (dB) and SSIM of (N, H, W, C) uint8 images."""
    psnrs, ssims = [], []
    for a, b in zip(restored, truth, strict=True):
        psnrs.append(peak_signal_noise_ratio(b, a, data_range=255))
        ssims.append(structural_similarity(b, a, data_range=255, channel_axis=-1))
    return float(np.mean(psnrs)), float(np.mean(ssims))


def masked_psnr(filled: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean per-image PSNR over the pixels `mask` (H, W) hides, identical pixels capped at 60 dB."""
    values = [
        min(60.0, peak_signal_noise_ratio(b[mask], a[mask], data_range=255))
        if not np.array_equal(a[mask], b[mask])
        else 60.0
        for a, b in zip(filled, truth, strict=True)
    ]
    return float(np.mean(values))


def nhwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


class Judge:
    """genq's CNN, frozen: class probabilities and penultimate features of uint8 NHWC images."""

    def __init__(self, model: api.LoadedModel) -> None:
        self.model, self.cnn = model, api.family_module("cnn")

    def probabilities(self, images: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self.cnn.classify(self.model.module, to_unit_range(nchw(images))).float().softmax(1)

    def features(self, images: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self.cnn.features(self.model.module, to_unit_range(nchw(images))).float()


def nearest(queries: np.ndarray, pool: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """Index into `pool` of each query's nearest image (L2 over the `known` (H, W) pixels, all if None)."""
    weight = torch.ones(queries.shape[1:3]) if known is None else torch.as_tensor(known).float()
    flat_weight = weight[..., None].expand(*queries.shape[1:]).reshape(-1)
    keep = flat_weight > 0
    q = torch.as_tensor(queries).reshape(len(queries), -1)[:, keep].float()
    p = torch.as_tensor(pool).reshape(len(pool), -1)[:, keep].float()
    found = [torch.cdist(chunk, p).argmin(1) for chunk in q.split(256)]
    return torch.cat(found).numpy()


@dataclass
class PathQuality:
    """The CNN's view of frame sequences (B paths of F frames) from class `a` to class `b`."""

    monotone: float  # share of paths whose p(b) never drops by more than 0.05 between frames
    no_detour: float  # share of paths where every frame's top class is a or b
    mean_step: float  # mean feature distance between neighbouring frames / distance of the ends
    max_step: float  # mean of each path's largest step / the ends' distance (1/(F-1) is even)


def path_quality(judge: Judge, frames: np.ndarray, a: np.ndarray, b: np.ndarray) -> PathQuality:
    """frames (B, F, H, W, C) uint8; a, b (B,) source and target classes."""
    count, length = frames.shape[:2]
    flat = frames.reshape(count * length, *frames.shape[2:])
    probs = judge.probabilities(flat).view(count, length, -1)
    feats = judge.features(flat).view(count, length, -1)
    p_target = probs[torch.arange(count), :, torch.as_tensor(b)]  # (B, F)
    monotone = (p_target.diff(dim=1) >= -0.05).all(dim=1)
    top = probs.argmax(2)
    allowed = (top == torch.as_tensor(a)[:, None]) | (top == torch.as_tensor(b)[:, None])
    steps = (feats[:, 1:] - feats[:, :-1]).norm(dim=2)  # (B, F-1)
    ends = (feats[:, -1] - feats[:, 0]).norm(dim=1).clamp(min=1e-6)
    return PathQuality(
        monotone=float(monotone.float().mean()),
        no_detour=float(allowed.all(dim=1).float().mean()),
        mean_step=float((steps.mean(1) / ends).mean()),
        max_step=float((steps.max(1).values / ends).mean()),
    )


def cross_fade(start: np.ndarray, end: np.ndarray, frames: int) -> np.ndarray:
    """(B, F, H, W, C): pixel blends from `start` to `end` (the baseline for latent paths)."""
    t = np.linspace(0.0, 1.0, frames)[None, :, None, None, None]
    blend = (1 - t) * start[:, None].astype(np.float64) + t * end[:, None].astype(np.float64)
    return np.rint(blend).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# The benchmark


def masks(size: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Mask kinds -> masks (True = missing): the centre square, four random boxes, the bottom half."""
    rng = np.random.default_rng(seed)
    centre = np.zeros((size, size), bool)
    centre[size // 4 : size - size // 4, size // 4 : size - size // 4] = True
    boxes = []
    for _ in range(4):
        h, w = rng.integers(size // 4, size // 2 + 1, 2)
        top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        box = np.zeros((size, size), bool)
        box[top : top + h, left : left + w] = True
        boxes.append(box)
    half = np.zeros((size, size), bool)
    half[size // 2 :] = True
    return {"centre": [centre], "random box": boxes, "half": [half]}


class Bench:
    def __init__(
        self, models: dict[str, api.LoadedModel], judge: api.LoadedModel, train: ImageSet, test: ImageSet
    ) -> None:
        self.models, self.classifier, self.judge = models, judge, Judge(judge)
        self.train_images = nhwc(train.images)
        assert train.labels is not None and test.labels is not None
        self.train_labels = train.labels.numpy()
        self.test, self.test_labels = nhwc(test.images), test.labels.numpy()
        self.rows: list[tuple[str, str, dict[str, float]]] = []

    def edit(self, family: str, **request: Any) -> api.EditOutput:
        return api.edit(self.models[family], api.EditRequest(**request), self.classifier)

    def add(self, operation: str, method: str, values: dict[str, float]) -> None:
        self.rows.append((operation, method, values))
        cells = "  ".join(f"{k} {v:.3g}" for k, v in values.items())
        print(f"  {operation:<18} {method:<30} {cells}", flush=True)

    def reconstruct(self, images: np.ndarray) -> None:
        for family in self.models:
            out = self.edit(family, operation="reconstruct", images=images)
            psnr, ssim = psnr_ssim(out.images, images)
            self.add("reconstruct", f"genq {family}", {"psnr_db": psnr, "ssim": ssim})
            if family == "vae":  # steps 0: the encoder's latent, unrefined (the method before 2026-12-02)
                out = self.edit(family, operation="reconstruct", images=images, steps=0)
                psnr, ssim = psnr_ssim(out.images, images)
                self.add("reconstruct", "genq vae, encoder latent only", {"psnr_db": psnr, "ssim": ssim})
        closest = self.train_images[nearest(images, self.train_images)]
        psnr, ssim = psnr_ssim(closest, images)
        self.add("reconstruct", "nearest training image", {"psnr_db": psnr, "ssim": ssim})

    def inpaint(self, images: np.ndarray, seed: int) -> None:
        mean_image = np.rint(self.train_images.mean(axis=0)).astype(np.uint8)
        for kind, kind_masks in masks(images.shape[1], seed).items():
            groups = np.array_split(np.arange(len(images)), len(kind_masks))  # one mask per group
            scores: dict[str, list[float]] = {}
            for group, mask in zip(groups, kind_masks, strict=True):
                truth = images[group]
                fills = {
                    f"genq {family}": self.edit(family, operation="inpaint", images=truth, mask=mask).images
                    for family in self.models
                }
                fills["mean-fill"] = np.where(mask[None, :, :, None], mean_image[None], truth)
                donors = self.train_images[nearest(truth, self.train_images, known=~mask)]
                fills["nearest-neighbour fill"] = np.where(mask[None, :, :, None], donors, truth)
                for method, filled in fills.items():
                    scores.setdefault(method, []).extend([masked_psnr(filled, truth, mask)] * len(group))
            for method, values in scores.items():
                self.add(f"inpaint {kind}", method, {"masked_psnr_db": float(np.mean(values))})

    def class_swap(self, images: np.ndarray, labels: np.ndarray, targets: np.ndarray, seed: int) -> None:
        rng = np.random.default_rng(seed)
        source_features = self.judge.features(images)
        randoms = np.array([rng.choice(np.flatnonzero(self.train_labels == t)) for t in targets])
        random_images = self.train_images[randoms]
        random_distance = (self.judge.features(random_images) - source_features).norm(dim=1)
        outputs = {
            f"genq {family}": self.edit(
                family,
                operation="class_swap",
                images=images,
                labels=labels.tolist(),
                target_labels=targets.tolist(),
            ).images
            for family in self.models
        }
        outputs["random target-class image"] = random_images
        for method, out in outputs.items():
            hits = self.judge.probabilities(out).argmax(1).numpy() == targets
            distance = (self.judge.features(out) - source_features).norm(dim=1)
            self.add(
                "class swap",
                method,
                {
                    "target_hit": float(hits.mean()),
                    "feature_dist_to_source": float(distance.mean()),
                    "closer_than_random": float((distance < random_distance).float().mean()),
                },
            )

    def attribute(self, images: np.ndarray, labels: np.ndarray, targets: np.ndarray, frames: int) -> None:
        strengths = np.linspace(0.0, 1.0, frames)
        for family in self.models:
            path = [
                self.edit(
                    family, operation="attribute", images=images, labels=labels.tolist(),
                    target_labels=targets.tolist(), strength=float(s),
                ).images
                for s in strengths
            ]  # fmt: skip
            quality = path_quality(self.judge, np.stack(path, axis=1), labels, targets)
            self.add("attribute 0->1", f"genq {family}", vars(quality))
        rng = np.random.default_rng(0)
        partners = np.array([rng.choice(np.flatnonzero(self.train_labels == t)) for t in targets])
        fade = cross_fade(images, self.train_images[partners], frames)
        self.add(
            "attribute 0->1",
            "cross-fade to a target image",
            vars(path_quality(self.judge, fade, labels, targets)),
        )

    def interpolate(self, pairs: np.ndarray, frames: int) -> None:
        """pairs (P, 2) indices into the test images, of different classes."""
        a, b = self.test_labels[pairs[:, 0]], self.test_labels[pairs[:, 1]]
        for family in self.models:
            paths = [
                self.edit(
                    family, operation="interpolate", images=self.test[pair],
                    labels=self.test_labels[pair].tolist(), steps=frames,
                ).images
                for pair in pairs
            ]  # fmt: skip
            self.add("interpolate", f"genq {family}", vars(path_quality(self.judge, np.stack(paths), a, b)))
        fade = cross_fade(self.test[pairs[:, 0]], self.test[pairs[:, 1]], frames)
        self.add("interpolate", "pixel cross-fade", vars(path_quality(self.judge, fade, a, b)))


def table(rows: list[tuple[str, str, dict[str, float]]]) -> str:
    """One Markdown table: operation, method, then each measure (blank where it does not apply)."""
    columns = list(dict.fromkeys(k for _, _, values in rows for k in values))
    lines = [
        "| operation | method | " + " | ".join(columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for operation, method, values in rows:
        cells = [f"{values[c]:.3g}" if c in values else "" for c in columns]
        lines.append(f"| {operation} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=128, help="test images per operation")
    parser.add_argument("--path-images", type=int, default=32, help="images (and pairs) for paths")
    parser.add_argument("--frames", type=int, default=6, help="frames per attribute/interpolation path")
    parser.add_argument("--families", default="gan,vae")
    parser.add_argument("--operations", default=",".join(OPERATIONS), help="a comma-separated subset")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="trained models are kept here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    print(f"torch threads: {configure_threads(args.threads)}; load average {os.getloadavg()}", flush=True)
    tune_allocator()
    train, test = load_builtin("fashion-mnist", "train"), load_builtin("fashion-mnist", "test")
    judge = trained_model("cnn", train, test, args.cache)
    models = {family: trained_model(family, train, test, args.cache) for family in args.families.split(",")}
    bench = Bench(models, judge, train, test)

    rng = np.random.default_rng(args.seed)
    chosen = rng.permutation(len(test))[: args.images]
    images, labels = bench.test[chosen], bench.test_labels[chosen]
    k = len(test.class_names)
    targets = (labels + rng.integers(1, k, len(labels))) % k  # a different class for each image
    started = time.perf_counter()
    operations = set(args.operations.split(","))
    if "reconstruct" in operations:
        bench.reconstruct(images)
    if "inpaint" in operations:
        bench.inpaint(images, args.seed)
    if "class_swap" in operations:
        bench.class_swap(images, labels, targets, args.seed)
    few = slice(0, args.path_images)
    if "attribute" in operations:
        bench.attribute(images[few], labels[few], targets[few], args.frames)
    others = rng.permutation(len(test))
    pairs = []
    for i in chosen[: args.path_images]:
        j = next(int(j) for j in others if bench.test_labels[j] != bench.test_labels[i])
        others = others[others != j]
        pairs.append((int(i), j))
    if "interpolate" in operations:
        bench.interpolate(np.array(pairs), args.frames)
    print(f"\n{len(images)} test images; {time.perf_counter() - started:.0f} s of edits\n")
    print(table(bench.rows), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([list(row) for row in bench.rows], indent=2))
    return {"rows": bench.rows}


if __name__ == "__main__":
    main()
