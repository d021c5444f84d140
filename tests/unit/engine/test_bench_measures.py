"""The measures of bench/editing.py and bench/small_sets.py on tiny hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

from bench.editing import cross_fade, masked_psnr, masks, nearest
from bench.small_sets import checkerboard_share, shapes


def test_masked_psnr_looks_only_at_the_hidden_pixels() -> None:
    truth = np.zeros((2, 4, 4, 1), np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    wrong_outside = truth.copy()
    wrong_outside[:, 3] = 255
    assert masked_psnr(wrong_outside, truth, mask) == 60.0  # identical where it counts
    wrong_inside = truth.copy()
    wrong_inside[:, 0] = 255  # half the hidden pixels off by the full range
    assert masked_psnr(wrong_inside, truth, mask) == pytest.approx(10 * np.log10(2), abs=1e-6)


def test_nearest_uses_only_the_known_pixels() -> None:
    pool = np.zeros((3, 4, 4, 1), np.uint8)
    pool[1, :2] = 200  # matches the query's top half
    pool[2, 2:] = 90  # closest overall: the query's bottom half is 90
    query = np.zeros((1, 4, 4, 1), np.uint8)
    query[0, :2], query[0, 2:] = 200, 90
    assert nearest(query, pool).tolist() == [1]
    bottom_hidden = np.zeros((4, 4), bool)
    bottom_hidden[2:] = True
    assert nearest(query, pool, known=~bottom_hidden).tolist() == [1]
    top_hidden = ~bottom_hidden
    assert nearest(query, pool, known=~top_hidden).tolist() == [2]


def test_masks_and_cross_fade() -> None:
    found = masks(28, 0)
    assert (
        found["centre"][0].sum() == 14 * 14 and found["half"][0][14:].all() and len(found["random box"]) == 4
    )
    fade = cross_fade(np.zeros((1, 2, 2, 1), np.uint8), np.full((1, 2, 2, 1), 100, np.uint8), 5)
    assert fade.shape == (1, 5, 2, 2, 1) and fade[0, :, 0, 0, 0].tolist() == [0, 25, 50, 75, 100]


def test_checkerboard_share_finds_a_two_pixel_pattern() -> None:
    board = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 255).to(torch.uint8)
    assert checkerboard_share(board.expand(2, 3, 16, 16)) == pytest.approx(1.0)
    ramp = torch.arange(16, dtype=torch.uint8)[None, None, None, :].expand(2, 3, 16, 16) * 16
    assert checkerboard_share(ramp) < 0.05


def test_shapes_are_labelled_rgb_images() -> None:
    data = shapes(6, 32, seed=0)
    assert data.images.shape == (6, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels is not None and data.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert data.class_names == ["circle", "square", "triangle"]
    assert not torch.equal(data.images, shapes(6, 32, seed=1).images)
