"""VAE edits: every operation on tiny trained models, conditional and not."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from worker.engine import vae
from worker.engine.api import EditOutput, EditRequest, LoadedModel
from worker.engine.imageset import ImageSet
from worker.engine.runtime import Canceled, ConfigError, RunContext, unpack_checkpoint
from worker.engine.vae_edits import edit

CPU = torch.device("cpu")
SIZE = 28


def labelled_data(count: int = 24, classes: int = 3) -> ImageSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 40, (count, 1, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    labels = torch.arange(count) % classes
    for i in range(count):
        k = int(labels[i])
        images[i, :, 4 + 6 * k : 10 + 6 * k, 6:14] = 220
    return ImageSet(images, labels, [f"class{k}" for k in range(classes)], "tiny")


def trained_model(conditional: bool) -> vae.VAE:
    data = labelled_data()
    options = {"width": 8, "latent_dim": 4, "batch_size": 8, "max_steps": 3, "conditional": conditional}
    config = dataclasses.replace(vae.Config.from_options(options, data), stats_images=24, eval_images=4)
    output = vae.train(config, data, RunContext(device=CPU))
    return vae.load(unpack_checkpoint(output.checkpoint), CPU)


@pytest.fixture(scope="module")
def models() -> dict[str, vae.VAE]:
    return {"conditional": trained_model(True), "unconditional": trained_model(False)}


def sources(count: int = 3) -> np.ndarray:
    return labelled_data().images[:count].permute(0, 2, 3, 1).numpy()  # (N, H, W, C) uint8


def always(label: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A fake classifier that always predicts `label`."""
    return lambda images: torch.nn.functional.one_hot(torch.full((len(images),), label), 3).float()


def check_images(result: EditOutput, count: int) -> None:
    assert result.images.shape == (count, SIZE, SIZE, 1) and result.images.dtype == np.uint8
    assert len(result.captions) == count and all(result.captions)


@pytest.mark.parametrize("kind", ["conditional", "unconditional"])
@pytest.mark.parametrize("operation", ["reconstruct", "invert"])
def test_reconstruct_and_invert(models: dict, kind: str, operation: str) -> None:
    result = edit(models[kind], EditRequest(operation, images=sources(), labels=[0, 1, 2]), None, None)
    check_images(result, 3)
    assert math.isfinite(result.metrics["psnr"])


def test_reconstruct_refines_the_encoder_latent(models: dict) -> None:
    request = EditRequest("reconstruct", images=sources(), labels=[0, 1, 2], steps=4)
    refined = edit(models["conditional"], request, None, None)
    assert refined.metrics["psnr"] > refined.metrics["psnr_encoder"]
    encoder_only = edit(models["conditional"], dataclasses.replace(request, steps=0), None, None)
    assert encoder_only.metrics["psnr"] == refined.metrics["psnr_encoder"]
    assert "psnr_encoder" not in encoder_only.metrics


def test_conditional_edits_infer_missing_labels(models: dict) -> None:
    result = edit(models["conditional"], EditRequest("reconstruct", images=sources()), None, None)
    check_images(result, 3)


@pytest.mark.parametrize("kind", ["conditional", "unconditional"])
def test_interpolate_between_seeds_and_images(models: dict, kind: str) -> None:
    model = models[kind]
    by_seeds = edit(model, EditRequest("interpolate", seeds=[3, 9], labels=[0, 2], steps=5), None, None)
    check_images(by_seeds, 5)
    ends = vae.sample(model, [3, 9], [0, 2] if model.num_classes else None)
    ends_uint8 = ends.add(1).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    assert np.abs(by_seeds.images[[0, -1]].astype(int) - ends_uint8.astype(int)).max() <= 1
    by_images = edit(model, EditRequest("interpolate", images=sources(2), steps=4), None, None)
    check_images(by_images, 4)
    with pytest.raises(ConfigError, match=r"^images: "):
        edit(model, EditRequest("interpolate", images=sources(3)), None, None)


def test_inpaint_keeps_known_pixels_and_improves_the_fit(models: dict) -> None:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[8:20, 8:20] = True
    seen: list = []
    ctx = RunContext(device=CPU, on_progress=seen.append)
    request = EditRequest("inpaint", images=sources(), labels=[0, 1, 2], mask=mask, steps=3)
    result = edit(models["unconditional"], request, None, ctx)
    check_images(result, 3)
    assert np.array_equal(result.images[:, ~mask], sources()[:, ~mask])
    assert math.isfinite(result.metrics["masked_psnr"]) and "masked_psnr_encoder" in result.metrics
    assert [p.step for p in seen] == list(range(1, 31)) and seen[0].phase == "edit"
    checks: list[int] = []
    stop_at_fifth = RunContext(device=CPU, should_stop=lambda: checks.append(1) or len(checks) >= 5)
    with pytest.raises(Canceled):  # checked every optimisation step
        edit(models["conditional"], request, None, stop_at_fifth)
    assert len(checks) == 5
    with torch.inference_mode():  # as a caller may run it: the optimisation still works
        again = edit(models["unconditional"], request, None, None)
    assert np.array_equal(again.images, result.images)
    with pytest.raises(ConfigError, match=r"^mask: "):
        edit(models["unconditional"], EditRequest("inpaint", images=sources(), mask=mask[:5]), None, None)


def test_class_swap(models: dict) -> None:
    request = EditRequest("class_swap", images=sources(), labels=[0, 1, 2], target_labels=[2])
    result = edit(models["conditional"], request, always(2), None)
    check_images(result, 3)
    assert result.metrics == {"target_class_rate": 1.0}
    assert "as class2" in result.captions[0]
    assert "target_class_rate" not in edit(models["conditional"], request, None, None).metrics
    with pytest.raises(ConfigError, match=r"^operation: "):
        edit(models["unconditional"], request, None, None)
    with pytest.raises(ConfigError, match=r"^target_labels: "):
        edit(models["conditional"], EditRequest("class_swap", images=sources(), labels=[0, 1, 2]), None, None)


def test_class_swap_moves_the_latent_between_class_means(models: dict) -> None:
    model = models["conditional"]
    request = EditRequest("class_swap", images=sources(), labels=[0, 1, 2], target_labels=[2])
    saved = model.class_latent_means
    try:
        model.class_latent_means = torch.zeros_like(saved)  # coinciding means: the label alone changes
        label_only = edit(model, request, None, None).images
        moved_means = torch.zeros_like(saved)
        moved_means[2] = 3.0  # the target class sits elsewhere in latent space
        model.class_latent_means = moved_means
        moved = edit(model, request, None, None).images
    finally:
        model.class_latent_means = saved
    assert not np.array_equal(moved[:2], label_only[:2])  # sources of classes 0 and 1 moved toward 2
    assert np.array_equal(moved[2], label_only[2])  # already class 2: no move


@pytest.mark.parametrize("kind", ["conditional", "unconditional"])
def test_attribute(models: dict, kind: str) -> None:
    model = models[kind]
    request = EditRequest("attribute", images=sources(), target_labels=[1, 1, 0], strength=1.5)
    result = edit(model, request, always(0), None)
    check_images(result, 3)
    assert result.metrics["target_class_rate"] == pytest.approx(1 / 3)
    assert "+1.50 toward class1" in result.captions[0]
    # Strength 0 changes nothing: the same images as decoding the encoder's latent (no refinement).
    still = edit(model, dataclasses.replace(request, strength=0.0, labels=[0, 1, 2]), None, None)
    same = edit(model, EditRequest("reconstruct", images=sources(), labels=[0, 1, 2], steps=0), None, None)
    assert np.array_equal(still.images, same.images)


def test_attribute_needs_class_statistics(models: dict) -> None:
    model = models["unconditional"]
    means = model.class_latent_means
    try:
        model.class_latent_means = None
        with pytest.raises(ConfigError, match=r"^operation: "):
            edit(model, EditRequest("attribute", images=sources(), target_labels=[1]), None, None)
    finally:
        model.class_latent_means = means


def test_unsupported_operation_and_loaded_model_wrapper(models: dict) -> None:
    with pytest.raises(ConfigError, match=r"^operation: paint not supported for vae"):
        edit(models["unconditional"], EditRequest("paint", images=sources()), None, None)
    model = models["unconditional"]
    loaded = LoadedModel("vae", {}, SIZE, 1, 0, [], "hash", model)
    check_images(edit(loaded, EditRequest("reconstruct", images=sources(2)), None, None), 2)
    with pytest.raises(ConfigError, match=r"^images: "):
        edit(loaded, EditRequest("reconstruct", images=np.zeros((1, 32, 32, 1), np.uint8)), None, None)
