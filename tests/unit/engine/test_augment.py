"""Adaptive augmentation (StyleGAN2-ADA's controller over DiffAugment) and checkerboard-free upsampling."""

from __future__ import annotations

import pytest
import torch

from worker.engine import gan
from worker.engine.augment import ADA_TARGET, AdaptiveProbability, diff_augment, overfitting
from worker.engine.gan_nets import Generator
from worker.engine.imageset import ImageSet
from worker.engine.runtime import RunContext, unpack_checkpoint


def test_probability_zero_changes_nothing_and_draws_nothing() -> None:
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    assert diff_augment(images, generator, 0.0) is images
    assert torch.equal(generator.get_state(), state)


def test_partial_probability_leaves_some_images_untouched() -> None:
    images = torch.rand(400, 1, 8, 8) * 2 - 1
    out = diff_augment(images, torch.Generator().manual_seed(0), 0.3)
    untouched = (out == images).flatten(1).all(1).float().mean()
    # Five transforms, each skipped with probability 0.7: about 0.7^5 = 17 % of images pass unchanged.
    assert 0.08 < untouched < 0.3
    assert torch.equal(out, diff_augment(images, torch.Generator().manual_seed(0), 0.3))


def test_controller_raises_p_when_the_discriminator_overfits_and_lowers_it_otherwise() -> None:
    confident = torch.ones(64)  # every real image called real: r_t = 1
    unsure = torch.tensor([1.0, -1.0] * 32)  # r_t = 0
    assert overfitting(confident) == 1.0 and overfitting(unsure) == 0.0 < ADA_TARGET
    ada = AdaptiveProbability(images=640)
    for _ in range(5):
        ada.update(confident)
    assert abs(ada.p - 0.5) < 1e-9
    for _ in range(20):
        ada.update(unsure)
    assert ada.p == 0.0  # never below 0
    for _ in range(20):
        ada.update(confident)
    assert ada.p == 1.0  # never above 1


def shapes_set(n: int = 8) -> ImageSet:
    images = torch.randint(
        0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    return ImageSet(images, torch.arange(n) % 2, ["a", "b"])


class Suspicious(AdaptiveProbability):
    """Treats any discriminator as overfitting (target below every r_t), so p rises every step."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__(p, target=-2.0, images=40)


def test_gan_adapts_by_default_and_resumes_with_its_probability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gan, "AdaptiveProbability", Suspicious)
    data = shapes_set()
    options = {"width": 8, "latent_dim": 8, "batch_size": 4, "max_steps": 6}
    config = gan.Config.from_options(options, data)
    assert config.diff_augment is None  # adaptive unless the user says otherwise
    saved: dict[int, bytes] = {}
    ctx = RunContext(device=torch.device("cpu"), on_checkpoint=lambda b, s: saved.setdefault(s, b),
                     checkpoint_every_steps=3)  # fmt: skip
    straight = unpack_checkpoint(gan.train(config, data, ctx).checkpoint)
    assert abs(straight["augment_p"] - 0.6) < 1e-9  # 6 steps of 4 images / 40
    resumed = unpack_checkpoint(
        gan.train(config, data, RunContext(device=torch.device("cpu"), resume_from=saved[3])).checkpoint
    )
    assert resumed["augment_p"] == straight["augment_p"]
    for key in ("generator", "discriminator"):
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, resumed[key][name]), name
    never = gan.Config.from_options({**options, "diff_augment": False}, data)
    assert (
        unpack_checkpoint(gan.train(never, data, RunContext(device=torch.device("cpu"))).checkpoint)[
            "augment_p"
        ]
        == 0.0
    )


def test_resize_upsampling_builds_every_size_and_old_checkpoints_keep_transposed() -> None:
    for size in (28, 32, 64):
        generator = Generator(16, 8, size, 3, 2, upsample="resize")
        out = generator(torch.randn(2, 16), torch.eye(2))
        assert out.shape == (2, 3, size, size)
        assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in generator.modules())
    config = gan.Config.from_options({}, shapes_set()).to_dict()
    del config["upsample"]  # written before the option existed
    assert gan.Config.from_dict(config).upsample == "transposed"
