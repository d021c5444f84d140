"""GAN edits on a tiny trained model: every operation runs and returns sensible images and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.engine import gan, gan_edits
from worker.engine.api import EditRequest, LoadedModel
from worker.engine.imageset import ImageSet, to_uint8
from worker.engine.runtime import Canceled, ConfigError, RunContext, unpack_checkpoint

SIZE, CHANNELS, CLASSES = 28, 1, 3


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def tiny_model(classes: int) -> LoadedModel:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, CHANNELS, SIZE, SIZE), dtype=torch.uint8)
    labels = torch.arange(8) % classes if classes else None
    data = ImageSet(images, labels, [f"c{i}" for i in range(classes)])
    options = {"width": 8, "latent_dim": 8, "batch_size": 4, "max_steps": 2}
    config = gan.Config.from_options(options, data)
    state = unpack_checkpoint(gan.train(config, data, RunContext(device=torch.device("cpu"))).checkpoint)
    generator = gan.load(state, torch.device("cpu"))
    return LoadedModel("gan", state["config"], SIZE, CHANNELS, classes, data.class_names, "hash", generator)


@pytest.fixture(scope="module")
def conditional() -> LoadedModel:
    return tiny_model(CLASSES)


@pytest.fixture(scope="module")
def unconditional() -> LoadedModel:
    return tiny_model(0)


def generated(model: LoadedModel, seeds: list[int], labels: list[int] | None = None) -> np.ndarray:
    """Source images the generator can reproduce: (N, H, W, C) uint8."""
    return to_uint8(gan.sample(model.module, seeds, labels)).permute(0, 2, 3, 1).numpy()


def always(label: int):
    """A stand-in classifier that sees `label` everywhere."""
    return lambda images: torch.nn.functional.one_hot(torch.full((len(images),), label), CLASSES).float()


def run(model: LoadedModel, classify=None, ctx: RunContext | None = None, **request):
    return gan_edits.edit(model, EditRequest(**request), classify, ctx)


def test_interpolate_between_seeds(conditional: LoadedModel) -> None:
    out = run(conditional, operation="interpolate", seeds=[3, 4], labels=[0, 2], steps=5)
    assert out.images.shape == (5, SIZE, SIZE, CHANNELS) and out.images.dtype == np.uint8
    assert len(out.captions) == 5 and "c0 -> c2" in out.captions[0]
    ends = generated(conditional, [3, 4], [0, 2])
    assert np.abs(out.images[[0, -1]].astype(int) - ends.astype(int)).max() <= 1  # batch rounding only


def test_interpolate_between_images(unconditional: LoadedModel) -> None:
    sources = generated(unconditional, [1, 2])
    out = run(unconditional, operation="interpolate", images=sources, steps=3)
    assert out.images.shape == (3, SIZE, SIZE, CHANNELS)
    assert "inversion_psnr" in out.metrics
    with pytest.raises(ConfigError, match=r"^interpolate: "):
        run(unconditional, operation="interpolate", seeds=[1])


def test_class_swap_and_attribute(conditional: LoadedModel) -> None:
    swap = run(conditional, always(2), operation="class_swap", seeds=[5, 6, 7], labels=[0], target_labels=[2])
    assert swap.images.shape == (3, SIZE, SIZE, CHANNELS)
    assert swap.metrics["target_class_rate"] == 1.0
    assert swap.captions[0] == "source 0: c0 -> c2"
    full = run(
        conditional, operation="attribute", seeds=[5, 6, 7], labels=[0], target_labels=[2], strength=1.0
    )
    assert np.array_equal(full.images, swap.images) and "target_class_rate" not in full.metrics
    request = {"seeds": [5, 6, 7], "labels": [0], "target_labels": [2]}
    half = run(conditional, always(1), operation="attribute", strength=0.5, **request)
    assert not np.array_equal(half.images, swap.images) and half.metrics["target_class_rate"] == 0.0
    sources = generated(conditional, [1])
    from_images = run(conditional, operation="class_swap", images=sources, target_labels=[1], steps=1)
    assert from_images.images.shape == (1, SIZE, SIZE, CHANNELS) and "inversion_psnr" in from_images.metrics


def test_class_edits_need_a_conditional_model(unconditional: LoadedModel) -> None:
    with pytest.raises(ConfigError, match=r"^operation: class_swap not supported"):
        run(unconditional, operation="class_swap", seeds=[1], target_labels=[0])


def test_invert_improves_on_a_random_latent(conditional: LoadedModel) -> None:
    sources = generated(conditional, [10, 11], [1, 2])
    out = run(conditional, operation="invert", images=sources, labels=[1, 2], steps=2)
    assert out.images.shape == sources.shape and len(out.captions) == 2
    original = torch.from_numpy(sources).permute(0, 3, 1, 2).float() / 127.5 - 1
    random_start = gan.sample(conditional.module, [12, 13], [1, 2])
    assert out.metrics["psnr"] > gan_edits.psnr(random_start, original) + 1.0
    again = run(conditional, operation="reconstruct", images=sources, labels=[1, 2], steps=2)
    assert np.array_equal(again.images, out.images)


def test_inpaint_keeps_known_pixels(unconditional: LoadedModel) -> None:
    sources = generated(unconditional, [20, 21])
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[8:20, 8:20] = True
    out = run(unconditional, operation="inpaint", images=sources, mask=mask, steps=1)
    assert out.images.shape == sources.shape
    assert np.array_equal(out.images[:, ~mask], sources[:, ~mask])
    assert np.isfinite(out.metrics["masked_psnr"]) and len(out.captions) == 2


def test_unsupported_and_malformed_requests(unconditional: LoadedModel) -> None:
    with pytest.raises(ConfigError, match=r"^operation: sharpen not supported for gan"):
        run(unconditional, operation="sharpen")
    with pytest.raises(ConfigError, match=r"^images: "):
        run(unconditional, operation="invert")
    with pytest.raises(ConfigError, match=r"^images: "):
        run(unconditional, operation="invert", images=np.zeros((1, 32, 32, 1), dtype=np.uint8))
    with pytest.raises(ConfigError, match=r"^mask: "):
        run(unconditional, operation="inpaint", images=generated(unconditional, [1]))


def test_cancel_stops_inversion(unconditional: LoadedModel) -> None:
    ctx = RunContext(device=torch.device("cpu"), should_stop=lambda: True)
    with pytest.raises(Canceled):
        run(unconditional, ctx=ctx, operation="invert", images=generated(unconditional, [1]))
