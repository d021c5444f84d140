"""The engine facade: the CNN path end to end, dispatch and request checks, evaluation plumbing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from shared.specs import CnnOptions, GanOptions
from worker.engine import api
from worker.engine.imageset import ImageSet
from worker.engine.runtime import Canceled, ConfigError, RunContext

CPU = torch.device("cpu")


def labelled_set(n: int = 64, size: int = 28, seed: int = 0) -> ImageSet:
    """Two mirror-symmetric classes: a bright square in the middle, or a dark one on a bright ring."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.rand(n, 1, size, size, generator=generator) * 60
    images[labels == 0, :, 10:18, 10:18] += 180
    images[labels == 1, :, 4:24, 4:24] += 180
    images[labels == 1, :, 10:18, 10:18] -= 180
    return ImageSet(images.clamp(0, 255).to(torch.uint8), labels, ["square", "ring"], "toy")


@pytest.fixture(scope="module")
def trained_cnn() -> tuple[api.TrainOutput, ImageSet]:
    data, holdout = labelled_set(), labelled_set(32, seed=1)
    options = CnnOptions(width=8, batch_size=16, epochs=3, lr=0.05)  # parsed: the runners' way
    return api.train("cnn", options, data, RunContext(device=CPU), holdout), holdout


def test_cnn_train_load_and_evaluate(trained_cnn: tuple[api.TrainOutput, ImageSet]) -> None:
    output, holdout = trained_cnn
    assert output.metrics["test_accuracy"] >= 0.9
    model = api.load(output.checkpoint, CPU)
    assert (model.family, model.image_size, model.channels, model.num_classes) == ("cnn", 28, 1, 2)
    assert model.class_names == ["square", "ring"] and model.config["width"] == 8
    assert model.version_hash == hashlib.sha256(output.checkpoint).hexdigest()
    result = api.evaluate(model, None, holdout)
    assert result["test_accuracy"] == output.metrics["test_accuracy"] and result["num_evaluated"] == 32
    classify = api.classifier_function(model)
    assert classify is not None and classify(torch.zeros(3, 1, 28, 28)).shape == (3, 2)


def test_dispatch_errors(trained_cnn: tuple[api.TrainOutput, ImageSet]) -> None:
    output, holdout = trained_cnn
    model = api.load(output.checkpoint, CPU)
    with pytest.raises(ConfigError, match=r"^family: "):
        api.train("rnn", {}, holdout, RunContext(device=CPU))
    with pytest.raises(ConfigError, match=r"^options\.colour: "):
        api.train("cnn", {"colour": True}, holdout, RunContext(device=CPU))
    with pytest.raises(ConfigError, match=r"^options: GanOptions given for a cnn"):
        api.train("cnn", GanOptions(), holdout, RunContext(device=CPU))
    with pytest.raises(ConfigError, match="cannot generate"):
        api.generate(model, [1, 2, 3])
    with pytest.raises(ConfigError, match="cannot edit"):
        api.edit(model, api.EditRequest(operation="reconstruct"))
    with pytest.raises(ConfigError, match="checkpoint"):
        api.load(b"not a checkpoint", CPU)
    with pytest.raises(ConfigError, match="classes"):
        api.evaluate(model, None, ImageSet(holdout.images, holdout.labels, ["a", "b", "c"]))


def tiny_gan(data: ImageSet) -> api.LoadedModel:
    options = {"width": 8, "latent_dim": 8, "batch_size": 8, "max_steps": 2}
    return api.load(api.train("gan", options, data, RunContext(device=CPU)).checkpoint, CPU)


def test_generate_chunks_labels_progress_and_cancel() -> None:
    model = tiny_gan(labelled_set(16))
    seeds = [api.item_seed(7, i) for i in range(7)]
    labels = [i % 2 for i in range(7)]
    progress = []
    chunks = list(
        api.generate(model, seeds, labels, chunk_size=3, ctx=RunContext(on_progress=progress.append))
    )
    assert [c.shape for c in chunks] == [(3, 28, 28, 1), (3, 28, 28, 1), (1, 28, 28, 1)]
    assert all(c.dtype == np.uint8 for c in chunks) and [p.step for p in progress] == [3, 6, 7]
    whole = next(api.generate(model, seeds, labels, chunk_size=100))
    np.testing.assert_array_equal(np.concatenate(chunks), whole)  # chunking never changes an item
    single = next(api.generate(model, seeds, 1, chunk_size=100))
    np.testing.assert_array_equal(single[1], whole[1])
    with pytest.raises(ConfigError, match="labels"):
        api.generate(model, seeds, [0, 1])
    with pytest.raises(ConfigError, match="labels"):
        api.generate(model, seeds, [5] * 7)
    with pytest.raises(Canceled):
        next(api.generate(model, seeds, None, ctx=RunContext(should_stop=lambda: True)))


def test_evaluate_generator_reports_metrics_beside_the_real_floor(
    trained_cnn: tuple[api.TrainOutput, ImageSet],
) -> None:
    output, holdout = trained_cnn
    classifier = api.load(output.checkpoint, CPU)
    model = tiny_gan(labelled_set(16))
    result = api.evaluate(model, classifier, holdout, num_samples=20, seed=3)
    assert result["num_samples"] == 20 and result["num_real"] == 20
    for key in ("fd", "kid_mean", "kid_std", "precision", "recall"):
        assert np.isfinite(result[key]) and np.isfinite(result["real_floor"][key])
    assert result["real_floor"]["num_per_half"] == 10 and 0 <= result["conditional_accuracy"] <= 1
    assert result["feature_network"]["version_hash"] == classifier.version_hash
    assert api.evaluate(model, classifier, holdout, num_samples=20, seed=3) == result  # deterministic
    with pytest.raises(ConfigError, match="classifier"):
        api.evaluate(model, None, holdout, num_samples=20)


def test_evaluate_vae_adds_the_negative_elbo(trained_cnn: tuple[api.TrainOutput, ImageSet]) -> None:
    output, holdout = trained_cnn
    options = {"width": 8, "latent_dim": 4, "batch_size": 8, "max_steps": 2, "conditional": False}
    model = api.load(api.train("vae", options, labelled_set(16), RunContext(device=CPU)).checkpoint, CPU)
    result = api.evaluate(model, api.load(output.checkpoint, CPU), holdout, num_samples=12, seed=0)
    assert result["family"] == "vae" and "conditional_accuracy" not in result
    assert np.isfinite(result["test_negative_elbo_nats"]) and result["test_negative_elbo_nats"] > 0
