"""The GAN family on tiny synthetic data: shapes, determinism, resume, per-item seeds, cancel, budget."""

from __future__ import annotations

import pytest
import torch

from worker.engine import gan
from worker.engine.augment import diff_augment
from worker.engine.gan_nets import Discriminator, Generator
from worker.engine.imageset import ImageSet
from worker.engine.latents import SAMPLE_BLOCK
from worker.engine.runtime import Canceled, ConfigError, RunContext, unpack_checkpoint

TINY = {"width": 8, "latent_dim": 8, "batch_size": 4, "max_steps": 3}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def image_set(size: int = 28, channels: int = 1, n: int = 12, classes: int = 3) -> ImageSet:
    generator = torch.Generator().manual_seed(size * 10 + channels)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)
    if not classes:
        return ImageSet(images, None)
    labels = torch.arange(n) % classes
    return ImageSet(images, labels, [f"c{i}" for i in range(classes)])


def cpu_ctx(**kwargs) -> RunContext:
    return RunContext(device=torch.device("cpu"), **kwargs)


def train_tiny(data: ImageSet, ctx: RunContext | None = None, **options):
    config = gan.Config.from_options({**TINY, **options}, data)
    return gan.train(config, data, ctx or cpu_ctx())


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------------
# Config


def test_options_validate_and_default() -> None:
    data = image_set()
    config = gan.Config.from_options({"latent_dim": None, "width": 16}, data)
    assert (config.latent_dim, config.width, config.conditional, config.num_classes) == (128, 16, True, 3)
    assert config.class_names == ["c0", "c1", "c2"]
    assert gan.Config.from_dict(config.to_dict()) == config
    assert gan.Config.from_options({"conditional": False}, data).num_classes == 0
    assert gan.Config.from_options({}, image_set(classes=0)).conditional is False


@pytest.mark.parametrize(
    ("options", "field"),
    [({"bogus": 1}, "bogus"), ({"latent_dim": 1}, "latent_dim"), ({"ema_decay": 1.0}, "ema_decay")],
)
def test_bad_options_name_the_field(options: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^options\.{field}: "):
        gan.Config.from_options(options, image_set())


def test_conditional_needs_labels() -> None:
    with pytest.raises(ConfigError, match=r"^options\.conditional: "):
        gan.Config.from_options({"conditional": True}, image_set(classes=0))


def test_total_steps_prefers_max_steps() -> None:
    config = gan.Config(batch_size=4, epochs=2)
    assert config.total_steps(10) == 6
    assert gan.Config(max_steps=5, epochs=2).total_steps(10) == 5
    assert gan.Config().total_steps(10) == gan.Config().default_steps


# ---------------------------------------------------------------------------------------------------
# Networks and math


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("classes", [0, 4])
def test_network_shapes(size: int, channels: int, classes: int) -> None:
    generator = Generator(8, 8, size, channels, classes)
    discriminator = Discriminator(8, size, channels, classes)
    labels = torch.tensor([0, 1, 3]) if classes else None
    y = generator.class_vectors(labels) if classes else None
    images = generator(torch.randn(3, 8), y)
    assert images.shape == (3, channels, size, size)
    assert images.abs().max() <= 1
    assert discriminator(images, labels).shape == (3,)
    logits = discriminator.scores_and_logits(images, labels)[1]
    assert (logits is None) if not classes else logits.shape == (3, classes)


def test_hinge_losses() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert gan.hinge_d_loss(real, fake).item() == pytest.approx(0.25 + 0.5)
    assert gan.hinge_g_loss(fake).item() == pytest.approx(1.0)


def test_batch_indices_cycle_permutations() -> None:
    first_epoch = torch.cat([gan.batch_indices(0, s, 4, 12) for s in range(3)])
    assert sorted(first_epoch.tolist()) == list(range(12))
    assert torch.equal(gan.batch_indices(0, 1, 4, 12), gan.batch_indices(0, 1, 4, 12))
    small = gan.batch_indices(0, 0, 8, 3)  # a data set smaller than a batch
    assert small.shape == (8,) and small.max() < 3


def test_diff_augment_is_seeded_and_differentiable() -> None:
    images = (torch.rand(5, 3, 32, 32) * 2 - 1).requires_grad_()
    a = diff_augment(images, torch.Generator().manual_seed(1))
    b = diff_augment(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and torch.equal(a, b)
    assert not torch.equal(a, images)
    a.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize(("size", "channels", "classes"), [(28, 1, 3), (32, 3, 0), (64, 3, 2)])
def test_train_outputs_and_sampling(size: int, channels: int, classes: int) -> None:
    out = train_tiny(image_set(size, channels, classes=classes), max_steps=2)
    assert out.sample_grid_png.startswith(b"\x89PNG") and out.loss_curve_png.startswith(b"\x89PNG")
    assert out.metrics["steps"] == 2 and out.metrics["images_seen"] == 8
    assert {"loss_g", "loss_d", "samples_per_sec"} <= out.metrics.keys()
    state = unpack_checkpoint(out.checkpoint)
    assert state["family"] == "gan" and state["step"] == 2
    model = gan.load(state, torch.device("cpu"))
    assert not model.training
    images = gan.sample(model, [1, 2, 3], [0, 1, 1] if classes else None, truncation=0.5, temperature=0.9)
    assert images.shape == (3, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1


def test_training_is_deterministic_and_ema_differs() -> None:
    data = image_set()
    first = unpack_checkpoint(train_tiny(data).checkpoint)
    second = unpack_checkpoint(train_tiny(data).checkpoint)
    for key in ("generator", "discriminator", "ema", "model"):
        assert_same_tensors(first[key], second[key])
    assert not torch.equal(first["ema"]["project.weight"], first["generator"]["project.weight"])


def test_resume_gives_the_same_weights() -> None:
    data = image_set(32, 3)
    saved: dict[int, bytes] = {}
    ctx = cpu_ctx(on_checkpoint=lambda b, s: saved.setdefault(s, b), checkpoint_every_steps=2)
    straight = unpack_checkpoint(train_tiny(data, ctx, max_steps=5, diff_augment=True).checkpoint)
    resumed_out = train_tiny(data, cpu_ctx(resume_from=saved[2]), max_steps=5, diff_augment=True)
    resumed = unpack_checkpoint(resumed_out.checkpoint)
    assert resumed["step"] == 5
    for key in ("generator", "discriminator", "ema", "model"):
        assert_same_tensors(straight[key], resumed[key])
    for key in ("series", "steps", "sums"):
        assert straight["history"][key] == resumed["history"][key]
    assert straight["history"]["resumed_at"] == [] and resumed["history"]["resumed_at"] == [2]


def test_item_depends_only_on_its_seed() -> None:
    model = gan.load(unpack_checkpoint(train_tiny(image_set()).checkpoint), torch.device("cpu"))
    seeds, labels = [11, 5, 7, 3, 2, 99, 42], [0, 1, 2, 0, 1, 2, 1]
    batch = gan.sample(model, seeds, labels)
    for i in (0, 3, 6):
        assert torch.equal(gan.sample(model, [seeds[i]], [labels[i]])[0], batch[i])
    # a conditional model without labels draws label seed % K, also per item
    assert torch.equal(gan.sample(model, [5], None)[0], gan.sample(model, [5], [5 % 3])[0])
    with pytest.raises(ConfigError, match=r"^labels: "):
        gan.sample(model, [1], [3])


def test_item_is_the_same_across_sample_blocks_and_chunkings() -> None:
    model = gan.load(unpack_checkpoint(train_tiny(image_set()).checkpoint), torch.device("cpu"))
    count = SAMPLE_BLOCK + 9  # two blocks, the second one padded
    seeds, labels = list(range(100, 100 + count)), [i % 3 for i in range(count)]
    whole = gan.sample(model, seeds, labels)
    assert whole.shape[0] == count
    for start, stop in ((0, 5), (5, SAMPLE_BLOCK + 2), (SAMPLE_BLOCK + 2, count)):
        assert torch.equal(gan.sample(model, seeds[start:stop], labels[start:stop]), whole[start:stop])


def test_cancel_raises() -> None:
    calls = []
    ctx = cpu_ctx(should_stop=lambda: len(calls) >= 2, on_progress=calls.append)
    with pytest.raises(Canceled):
        train_tiny(image_set(), ctx, max_steps=10)
    assert len(calls) == 2


def test_time_budget_stops_early() -> None:
    out = train_tiny(image_set(), cpu_ctx(max_seconds=0.0), max_steps=50)
    assert out.metrics["steps"] == 1
    assert unpack_checkpoint(out.checkpoint)["step"] == 1


def test_progress_reports_losses() -> None:
    seen = []
    train_tiny(image_set(classes=0), cpu_ctx(on_progress=seen.append), max_steps=2)
    assert [p.step for p in seen] == [1, 2] and seen[0].total == 2
    assert {"loss_g", "loss_d", "samples_per_sec"} <= seen[-1].metrics.keys()
