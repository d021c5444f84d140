from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from worker.engine.images import encode_png, encode_pngs, grid_png, loss_curve_png, resize_images, smooth


def decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_grid_of_grey_tensor_has_two_pixel_gutters() -> None:
    images = torch.full((5, 1, 4, 6), 200, dtype=torch.uint8)
    grid = decode(grid_png(images, nrow=3, scale=1))
    assert grid.mode == "L" and grid.size == (3 * (6 + 2) + 2, 2 * (4 + 2) + 2)
    pixels = np.asarray(grid)
    assert pixels[0].max() == 0 and pixels[2:6, 2:8].min() == 200
    assert pixels[8:12, 18:24].max() == 0  # the sixth cell is empty


def test_grid_accepts_rgb_arrays_and_defaults_to_a_square() -> None:
    images = np.zeros((9, 5, 5, 3), np.uint8)
    images[..., 1] = 255
    grid = decode(grid_png(images, scale=1))
    assert grid.mode == "RGB" and grid.size == (3 * 7 + 2, 3 * 7 + 2)
    assert tuple(np.asarray(grid)[3, 3]) == (0, 255, 0)
    with pytest.raises(ValueError):
        grid_png(np.zeros((2, 5, 5, 2), np.uint8))
    with pytest.raises(ValueError):
        grid_png(torch.zeros(2, 1, 5, 5))


def test_grid_magnifies_small_images_with_nearest_neighbour() -> None:
    image = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    image[0, 0, 0, 0] = 255  # one white pixel becomes a sharp 3x3 square
    grid = np.asarray(decode(grid_png(image)))
    assert grid.shape == (28 * 3 + 4, 28 * 3 + 4)
    assert grid[2:5, 2:5].min() == 255 and grid[5, 2] == 0 and grid[2, 5] == 0
    assert decode(grid_png(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))).size == (64 * 2 + 4, 64 * 2 + 4)


def test_grid_rows_carry_their_labels() -> None:
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    plain = np.asarray(decode(grid_png(images, nrow=2, scale=1)))
    labelled = np.asarray(decode(grid_png(images, nrow=2, scale=1, row_labels=["T-shirt/top", "Bag"])))
    margin = labelled.shape[1] - plain.shape[1]
    assert labelled.shape[0] == plain.shape[0] and margin > 20
    assert labelled[:11, :margin].max() > 0 and labelled[11:, :margin].max() > 0  # text in each row
    np.testing.assert_array_equal(labelled[:, margin:], plain)


def test_encode_png_round_trips() -> None:
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(decode(encode_png(image))), image)
    grey = image[..., :1]
    np.testing.assert_array_equal(np.asarray(decode(encode_png(grey))), grey[..., 0])


def test_encode_pngs_round_trips_a_batch_through_a_standard_decoder() -> None:
    rng = np.random.default_rng(1)
    for channels, mode in ((1, "L"), (3, "RGB")):
        batch = rng.integers(0, 256, (5, 6, 11, channels)).astype(np.uint8)
        encoded = encode_pngs(batch)
        assert len(encoded) == 5
        for png, image in zip(encoded, batch, strict=True):
            decoded = Image.open(io.BytesIO(png))
            decoded.load()  # checks every chunk's CRC and the zlib stream
            assert decoded.mode == mode and decoded.size == (11, 6)
            np.testing.assert_array_equal(np.asarray(decoded).reshape(image.shape), image)
    # 2-D images, and the same bytes one at a time as in a batch.
    flat = rng.integers(0, 256, (4, 4)).astype(np.uint8)
    assert encode_png(flat) == encode_pngs(flat[None, :, :, None])[0]
    for bad in (np.zeros((2, 4, 4, 2), np.uint8), np.zeros((2, 4, 4, 1), np.float32), np.zeros((4, 4, 1))):
        with pytest.raises(ValueError):
            encode_pngs(bad)


def test_resize_images_keeps_constant_images_and_shape() -> None:
    images = torch.full((3, 1, 28, 28), 77, dtype=torch.uint8)
    resized = resize_images(images, 64)
    assert (
        resized.shape == (3, 1, 64, 64) and resized.dtype == torch.uint8 and resized.unique().tolist() == [77]
    )
    assert resize_images(images, 28) is images
    stripes = (torch.arange(64) % 2 * 255).to(torch.uint8).expand(1, 1, 64, 64)
    assert resize_images(stripes.contiguous(), 8).float().std() < 10  # antialiased: no moire


def test_loss_curve_is_a_png_of_the_requested_size() -> None:
    history = {"loss_d": [1.0 / (i + 1) for i in range(300)], "loss_g": [float("nan"), 2.0, 1.5, 1.2]}
    curve = decode(loss_curve_png(history, width=400, height=200, y_label="hinge loss"))
    assert curve.size == (400, 200) and curve.mode == "RGB"
    assert np.asarray(curve).std() > 10  # something was drawn
    assert decode(loss_curve_png({})).size == (640, 360)
    assert decode(loss_curve_png({"loss": [3.0]})).size == (640, 360)


def test_loss_curve_x_axis_follows_real_steps_and_marks_resumes() -> None:
    losses = {"loss": [1.0] * 10}
    by_index = np.asarray(decode(loss_curve_png(losses)))
    by_step = np.asarray(decode(loss_curve_png(losses, steps=[500 * (i + 1) for i in range(10)])))
    assert not np.array_equal(by_index, by_step)  # the tick labels differ (10 vs 5000)
    resumed = np.asarray(
        decode(loss_curve_png(losses, steps=[500 * (i + 1) for i in range(10)], resumed_at=[2500]))
    )
    x = 76 + (640 - 16 - 76) * 2500 / 5000  # the plot's left edge plus half its width
    column = resumed[20:300, round(x)].astype(int)
    assert (column.sum(axis=1) < 600).sum() > 20  # a dashed grey line at step 2500
    assert (by_step[20:300, round(x)].astype(int).sum(axis=1) < 600).sum() < 5  # only the loss line


def test_smooth_is_debiased() -> None:
    assert smooth([5.0] * 10) == pytest.approx([5.0] * 10)
    assert smooth([]) == []
