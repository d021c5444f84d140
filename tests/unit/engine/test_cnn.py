from __future__ import annotations

import math

import pytest
import torch

from worker.engine import cnn
from worker.engine.imageset import ImageSet
from worker.engine.runtime import Canceled, ConfigError, RunContext, unpack_checkpoint

CPU = torch.device("cpu")


def stripes(n: int = 96, size: int = 12, seed: int = 0) -> ImageSet:
    """Three mirror-symmetric classes: horizontal bars, vertical bars, a bright center; noisy."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    base = torch.zeros(3, size, size)
    base[0, ::3, :] = 1
    base[1, :, ::3] = 1
    base[2, size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 1
    noisy = base[labels] * 180 + torch.rand(n, size, size, generator=generator) * 70
    return ImageSet(noisy.to(torch.uint8).unsqueeze(1), labels, ["rows", "columns", "center"], "stripes")


def tiny_config(data: ImageSet, **options: object) -> cnn.Config:
    return cnn.Config.from_options({"width": 8, "batch_size": 16, "epochs": 2, **options}, data)


def state_of(checkpoint: bytes) -> dict[str, torch.Tensor]:
    return unpack_checkpoint(checkpoint)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_config_from_options_validates_and_fills_data_fields() -> None:
    data = stripes()
    config = cnn.Config.from_options({"batch_size": 64, "epochs": None, "augment": False}, data)
    assert (config.image_size, config.channels, config.num_classes) == (12, 1, 3)
    assert config.lr == pytest.approx(0.025) and config.epochs == cnn.Config.epochs and not config.augment
    assert cnn.Config.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"^options\.depth: "):
        cnn.Config.from_options({"depth": 3}, data)
    with pytest.raises(ConfigError, match=r"^options\.width: "):
        cnn.Config.from_options({"width": 2}, data)
    with pytest.raises(ConfigError, match=r"^options\.label_smoothing: "):
        cnn.Config.from_options({"label_smoothing": 1.5}, data)
    with pytest.raises(ConfigError, match="labelled"):
        cnn.Config.from_options({}, ImageSet(data.images, None))


def test_learning_rate_schedule() -> None:
    assert cnn.learning_rate(0, 100, 1.0, 0.25) == pytest.approx(0.1)
    assert cnn.learning_rate(25, 100, 1.0, 0.25) == pytest.approx(1.0)
    assert cnn.learning_rate(100, 100, 1.0, 0.25) == pytest.approx(0.001)
    rates = [cnn.learning_rate(s, 100, 1.0, 0.25) for s in range(101)]
    assert max(rates) == pytest.approx(1.0) and all(math.isfinite(r) for r in rates)


def test_augment_batch_shifts_and_flips_reproducibly() -> None:
    images = torch.arange(2 * 36, dtype=torch.float32).view(2, 1, 6, 6)
    first = cnn.augment_batch(images, 2, torch.Generator().manual_seed(1))
    again = cnn.augment_batch(images, 2, torch.Generator().manual_seed(1))
    assert first.shape == images.shape and torch.equal(first, again)
    # Every output row is a (possibly mirrored) run of one source row, edge pixels repeated.
    assert set(first.unique().tolist()) <= set(images.unique().tolist())
    no_shift = cnn.augment_batch(images, 0, torch.Generator().manual_seed(3))
    assert all(
        torch.equal(out, img) or torch.equal(out, img.flip(-1))
        for out, img in zip(no_shift, images, strict=True)
    )


def test_training_learns_and_reports() -> None:
    data, holdout = stripes(), stripes(48, seed=1)
    progress = []
    output = cnn.train(
        tiny_config(data, epochs=3, lr=0.05),
        data,
        RunContext(on_progress=progress.append, device=CPU),
        holdout,
    )
    metrics = output.metrics
    assert metrics["test_accuracy"] >= 0.9 and metrics["evaluated_on"] == "holdout"
    assert metrics["num_evaluated"] == 48 and sum(map(sum, metrics["confusion_matrix"])) == 48
    assert set(metrics["per_class_accuracy"]) == {"rows", "columns", "center"}
    assert metrics["steps"] == 3 * (96 // 16) and progress[-1].step == progress[-1].total == metrics["steps"]
    assert "loss" in progress[-1].metrics and "samples_per_sec" in progress[-1].metrics
    assert output.sample_grid_png.startswith(b"\x89PNG") and output.loss_curve_png.startswith(b"\x89PNG")
    model = cnn.load(unpack_checkpoint(output.checkpoint), CPU)
    x = torch.rand(5, 1, 12, 12) * 2 - 1
    assert cnn.classify(model, x).shape == (5, 3) and cnn.features(model, x).shape == (5, 32)
    # Without a holdout set the metrics come from the validation split.
    assert cnn.train(tiny_config(data, max_steps=2), data, RunContext(device=CPU)).metrics[
        "evaluated_on"
    ] == ("validation")


def test_same_seed_gives_identical_weights() -> None:
    data = stripes()
    first = cnn.train(tiny_config(data, max_steps=4), data, RunContext(device=CPU))
    second = cnn.train(tiny_config(data, max_steps=4), data, RunContext(device=CPU))
    assert_same_weights(state_of(first.checkpoint), state_of(second.checkpoint))
    other = cnn.train(tiny_config(data, max_steps=4, seed=1), data, RunContext(device=CPU))
    assert not torch.equal(
        state_of(other.checkpoint)["head.weight"], state_of(first.checkpoint)["head.weight"]
    )


def test_resumed_run_ends_with_the_same_weights() -> None:
    data = stripes()
    config = tiny_config(data, max_steps=9)  # 6 steps per epoch: the resume crosses an epoch boundary
    saved: dict[int, bytes] = {}
    ctx = RunContext(
        on_checkpoint=lambda blob, step: saved.update({step: blob}), checkpoint_every_steps=4, device=CPU
    )
    uninterrupted = cnn.train(config, data, ctx)
    assert sorted(saved) == [4, 8]
    resumed = cnn.train(config, data, RunContext(resume_from=saved[4], device=CPU))
    assert_same_weights(state_of(uninterrupted.checkpoint), state_of(resumed.checkpoint))
    assert (
        unpack_checkpoint(resumed.checkpoint)["history"]["loss"]
        == unpack_checkpoint(uninterrupted.checkpoint)["history"]["loss"]
    )
    assert unpack_checkpoint(resumed.checkpoint)["resumed_at"] == [4]


def test_cancel_and_time_budget() -> None:
    data = stripes()
    with pytest.raises(Canceled):
        cnn.train(tiny_config(data), data, RunContext(should_stop=lambda: True, device=CPU))
    output = cnn.train(tiny_config(data), data, RunContext(max_seconds=0.0, device=CPU))
    assert output.metrics["steps"] == 1  # the budget is checked after each step; the run still finishes
