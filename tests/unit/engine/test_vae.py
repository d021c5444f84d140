"""VAE family: loss math on known values, shapes, determinism, resume, per-item seeds, mixture prior."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from worker.engine import vae
from worker.engine.imageset import ImageSet
from worker.engine.latents import SAMPLE_BLOCK
from worker.engine.mixture_prior import MixturePrior, fit_mixture
from worker.engine.runtime import Canceled, ConfigError, RunContext, unpack_checkpoint
from worker.engine.vae_loss import (
    discretised_logistic_log_probs,
    gaussian_kl,
    kl_beta,
    reconstruction_nll,
    reparameterise,
)
from worker.engine.vae_nets import VAE

CPU = torch.device("cpu")
TINY = {"width": 8, "latent_dim": 4, "batch_size": 8, "max_steps": 4, "kl_warmup_steps": 2}


def tiny_data(
    count: int = 24, size: int = 28, channels: int = 1, classes: int = 3, seed: int = 0
) -> ImageSet:
    """Noisy images with a bright square whose position is the class."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 40, (count, channels, size, size), generator=generator, dtype=torch.uint8)
    labels = torch.arange(count) % classes if classes else None
    for i in range(count):
        k = int(labels[i]) if labels is not None else 0
        images[i, :, 4 + 6 * k : 10 + 6 * k, 6:14] = 220
    names = [f"class{k}" for k in range(classes)] if classes else []
    return ImageSet(images, labels, names, "tiny")


def tiny_config(data: ImageSet, **options: object) -> vae.Config:
    config = vae.Config.from_options({**TINY, **options}, data)
    return dataclasses.replace(config, lr_warmup_steps=1, stats_images=16, eval_images=8)


def train(config: vae.Config, data: ImageSet, **ctx_args: object) -> tuple[dict, dict]:
    output = vae.train(config, data, RunContext(device=CPU, **ctx_args))  # type: ignore[arg-type]
    return unpack_checkpoint(output.checkpoint), output.metrics


# ---------------------------------------------------------------------------------------------------
# Loss math


def test_kl_of_standard_normal_is_zero_and_known_values() -> None:
    assert gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5)).abs().max() == 0
    # KL(N(1, 1) || N(0, 1)) = 0.5 per dimension; KL(N(0, e) || N(0, 1)) = 0.5 (e - 1 - 1) per dimension
    assert gaussian_kl(torch.ones(1, 4), torch.zeros(1, 4)).item() == pytest.approx(2.0)
    assert gaussian_kl(torch.zeros(1, 2), torch.ones(1, 2)).item() == pytest.approx(math.e - 2.0)


def test_reparameterise_and_kl_beta() -> None:
    mean, logvar = torch.tensor([[1.0, -2.0]]), torch.log(torch.tensor([[4.0, 0.25]]))
    assert torch.allclose(reparameterise(mean, logvar, torch.zeros(1, 2)), mean)
    assert torch.allclose(reparameterise(mean, logvar, torch.ones(1, 2)), torch.tensor([[3.0, -1.5]]))
    assert [kl_beta(s, 100) for s in (0, 50, 100, 500)] == [0.0, 0.5, 1.0, 1.0]
    assert kl_beta(0, 0) == 1.0


@pytest.mark.parametrize("mean", [-1.6, -1.0, -0.3, 0.0, 0.71, 1.0, 1.4])
@pytest.mark.parametrize("log_scale", [-7.0, -4.0, -1.0, 0.5])
def test_discretised_logistic_sums_to_one_over_the_256_bins(mean: float, log_scale: float) -> None:
    values = torch.arange(256, dtype=torch.float32) / 127.5 - 1.0  # every 8-bit value of one pixel
    log_probs = discretised_logistic_log_probs(values, torch.tensor(mean), torch.tensor(log_scale))
    assert torch.isfinite(log_probs).all()
    assert log_probs.double().exp().sum().item() == pytest.approx(1.0, abs=2e-3)


def test_bernoulli_matches_binary_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 1, 5, 5), generator=generator).float() / 127.5 - 1.0
    logits = torch.randn(3, 1, 5, 5, generator=generator) * 3
    expected = torch.stack(
        [
            F.binary_cross_entropy(torch.sigmoid(logits[i]), (images[i] + 1) / 2, reduction="sum")
            for i in range(3)
        ]
    )
    assert torch.allclose(reconstruction_nll("bernoulli", images, logits, {}), expected, atol=1e-4)


def test_gaussian_is_the_normal_density_on_the_8bit_scale() -> None:
    images, mean, log_sigma = torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, 1, 2, 2), torch.tensor(-1.0)
    density = torch.distributions.Normal(0.0, math.exp(-1.0)).log_prob(torch.tensor(0.5)).item()
    assert reconstruction_nll("gaussian", images, mean, {"log_sigma": log_sigma}).item() == pytest.approx(
        -4 * (density - math.log(127.5)), rel=1e-5
    )


# ---------------------------------------------------------------------------------------------------
# Configuration and shapes


def test_config_checks_options() -> None:
    data = tiny_data()
    with pytest.raises(ConfigError, match=r"^options\.colour: "):
        vae.Config.from_options({"colour": 1}, data)
    with pytest.raises(ConfigError, match=r"^options\.latent_dim: "):
        vae.Config.from_options({"latent_dim": 1}, data)
    with pytest.raises(ConfigError, match=r"^options\.likelihood: "):
        vae.Config.from_options({"likelihood": "poisson"}, data)
    unlabelled = ImageSet(data.images, None)
    with pytest.raises(ConfigError, match=r"^options\.conditional: "):
        vae.Config.from_options({"conditional": True}, unlabelled)
    config = vae.Config.from_options({"latent_dim": None, "conditional": None}, data)
    assert config.latent_dim == vae.Config.latent_dim and config.conditional and config.num_classes == 3
    assert vae.Config.from_options({}, unlabelled).num_classes == 0
    assert vae.Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("classes", [0, 3])
def test_shapes(size: int, channels: int, classes: int) -> None:
    model = VAE(size, channels, 8, 4, classes, "logistic").eval()
    x = torch.rand(2, channels, size, size) * 2 - 1
    labels = torch.tensor([0, 2]) if classes else None
    mean, logvar = model.encode(x, model.label_vectors(labels))
    assert mean.shape == logvar.shape == (2, 4)
    assert model.decode(mean, model.label_vectors(labels)).shape == (2, channels, size, size)
    images = vae.sample(model, [1, 2, 3], [0, 1, 2] if classes else None)
    assert images.shape == (3, channels, size, size) and images.min() >= -1 and images.max() <= 1


# ---------------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("likelihood", ["logistic", "bernoulli", "gaussian"])
def test_training_is_deterministic_and_reports(likelihood: str) -> None:
    data = tiny_data()
    config = tiny_config(data, likelihood=likelihood)
    seen: list = []
    first, metrics = train(config, data, on_progress=seen.append)
    second, _ = train(config, data)
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][name]), name
    assert [p.step for p in seen] == [1, 2, 3, 4]
    assert {"loss", "recon", "kl", "beta", "samples_per_sec"} <= set(seen[0].metrics)
    assert seen[-1].metrics["beta"] == 1.0  # the warm-up is over by the end
    assert metrics["metrics_split"] == "validation" and metrics["steps"] == 4
    assert math.isfinite(metrics["negative_elbo"]) and metrics["kl"] >= 0
    assert first["class_latent_means"].shape == (3, 4) and first["prior"] is None


def test_train_output_has_pngs_and_holdout_metrics() -> None:
    data = tiny_data()
    output = vae.train(tiny_config(data), data, RunContext(device=CPU), holdout=tiny_data(6, seed=1))
    assert output.sample_grid_png.startswith(b"\x89PNG") and output.loss_curve_png.startswith(b"\x89PNG")
    assert output.metrics["metrics_split"] == "holdout" and "holdout_negative_elbo" in output.metrics


def test_resume_gives_the_same_weights() -> None:
    data = tiny_data()
    config = tiny_config(data, max_steps=5)
    saved: dict[int, bytes] = {}
    full, _ = train(
        config, data, on_checkpoint=lambda b, s: saved.__setitem__(s, b), checkpoint_every_steps=2
    )
    assert sorted(saved) == [2, 4]
    resumed, _ = train(config, data, resume_from=saved[2])
    assert resumed["step"] == full["step"] == 5
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for key in ("series", "steps", "sums"):
        assert full["history"][key] == resumed["history"][key]
    assert full["history"]["resumed_at"] == [] and resumed["history"]["resumed_at"] == [2]


def test_time_budget_stops_gracefully_and_cancel_raises() -> None:
    data = tiny_data()
    _, metrics = train(tiny_config(data), data, max_seconds=0.0)
    assert metrics["steps"] == 1
    with pytest.raises(Canceled):
        train(tiny_config(data), data, should_stop=lambda: True)


# ---------------------------------------------------------------------------------------------------
# Sampling, the mixture prior, the ELBO


@pytest.fixture(scope="module")
def trained() -> dict:
    data = tiny_data()
    state, _ = train(tiny_config(data, prior_components=2), data)
    return state


def test_items_depend_only_on_their_own_seed_and_label(trained: dict) -> None:
    for prior in (trained["prior"], None):
        model = vae.load({**trained, "prior": prior}, CPU)
        assert (model.prior is None) == (prior is None)
        batch = vae.sample(model, [5, 6, 7], [0, 1, 2], temperature=0.8)
        alone = vae.sample(model, [6], [1], temperature=0.8)
        assert torch.equal(batch[1], alone[0])  # bit for bit, not just close
        assert not torch.allclose(batch[1], vae.sample(model, [6], [2], temperature=0.8)[0])
        truncated = vae.sample(model, [5, 6], [0, 1], truncation=0.5)
        assert torch.equal(truncated[1], vae.sample(model, [6], [1], truncation=0.5)[0])
    # Across decoder blocks: two blocks, the second padded, against other chunkings.
    count = SAMPLE_BLOCK + 9
    seeds, labels = list(range(100, 100 + count)), [i % 3 for i in range(count)]
    whole = vae.sample(model, seeds, labels)
    for start, stop in ((0, 1), (1, SAMPLE_BLOCK + 2), (SAMPLE_BLOCK + 2, count)):
        assert torch.equal(vae.sample(model, seeds[start:stop], labels[start:stop]), whole[start:stop])
    assert vae.sample(model, [], []).shape == (0, *whole.shape[1:])


def test_mixture_prior_fit_and_sampling() -> None:
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(400, 2, generator=generator) * 0.1
    points = torch.cat([noise[:200] + 5, noise[200:] - 5])
    prior = fit_mixture(points, 2, seed=0)
    assert sorted(prior.means[:, 0].round().tolist()) == [-5.0, 5.0]
    assert torch.allclose(prior.weights, torch.tensor([0.5, 0.5]), atol=0.01)
    latents = prior.latents(range(200))
    assert ((latents - 5).norm(dim=1) < 1).sum() + ((latents + 5).norm(dim=1) < 1).sum() == 200
    assert torch.equal(prior.latents([7, 8])[1], prior.latents([8])[0])
    restored = MixturePrior.from_state(prior.to_state())
    assert torch.equal(restored.latents([3]), prior.latents([3]))
    at_zero = prior.latents(range(10), temperature=0.0)  # temperature 0: exactly a component mean
    assert all(any(torch.equal(row, mean) for mean in prior.means) for row in at_zero)


def test_negative_elbo_is_finite_and_deterministic(trained: dict) -> None:
    model = vae.load(trained, CPU)
    data = tiny_data(10, seed=3)
    value = vae.negative_elbo(model, data.images, data.labels)
    assert math.isfinite(value) and value > 0
    assert vae.negative_elbo(model, data.images, data.labels) == value
    unit = data.images.float() / 127.5 - 1.0
    assert vae.negative_elbo(model, unit, data.labels) == pytest.approx(value, rel=1e-5)
    # No labels for a conditional model: the class-marginal bound, never below the best label's.
    marginal = vae.negative_elbo(model, data.images)
    assert math.isfinite(marginal)
    with pytest.raises(ConfigError, match=r"^images: "):
        vae.negative_elbo(model, data.images[:, :, :20])
