"""Pictures a run hands back: sample grids, loss curves, PNG encoding of single images, resizing.

PIL only (no matplotlib): the worker image stays small and the output is the same on every machine.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

try:  # zlib-ng: the same deflate streams, faster than zlib at level 1 on small images (BENCHMARKS.md)
    from zlib_ng import zlib_ng as deflate
except ImportError:  # pragma: no cover - a worker without the optional speed-up still works
    deflate = zlib

GRID_PADDING = 2  # pixels between (and around) grid cells
SERIES_COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
]


def _as_nhwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 NCHW tensor or NHWC array -> uint8 (N, H, W, C) array, C in {1, 3}."""
    if isinstance(images, torch.Tensor):
        array = images.detach().cpu()
        if array.ndim == 3:
            array = array.unsqueeze(1)
        array = array.permute(0, 2, 3, 1).numpy()
    else:
        array = np.asarray(images)
        if array.ndim == 3:
            array = array[..., None]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 images with 1 or 3 channels, got {array.dtype} {array.shape}")
    return array


DISPLAY_SIDE = 96  # grids show each image about this many pixels wide: 28x28 and 32x32 at 3x, 64x64 at 2x
LABEL_MARGIN = 8  # pixels between a row's label and its first image


def display_scale(side: int) -> int:
    """Whole-number magnification that shows a `side`-pixel image about DISPLAY_SIDE pixels wide."""
    return max(1, round(DISPLAY_SIDE / max(side, 1)))


def grid_png(
    images: torch.Tensor | np.ndarray,
    nrow: int | None = None,
    *,
    scale: int | None = None,
    row_labels: Sequence[str] | None = None,
) -> bytes:
    """One PNG of all images tiled `nrow` per row (default: a square-ish grid) with 2 px black gutters.

    `images`: uint8 (N, C, H, W) tensor or (N, H, W, C) array. Each image is magnified `scale` times
    with nearest-neighbour (default: display_scale, so a 28x28 image is 84 pixels wide and its pixels
    stay sharp squares); `row_labels` are written left of each row (class names, "mask", ...)."""
    array = _as_nhwc(images)
    factor = display_scale(max(array.shape[1:3])) if scale is None else max(1, int(scale))
    if factor > 1:
        array = array.repeat(factor, axis=1).repeat(factor, axis=2)
    n, h, w, c = array.shape
    per_row = max(1, min(nrow or math.ceil(math.sqrt(max(n, 1))), max(n, 1)))
    rows = max(1, math.ceil(n / per_row))
    font = _font(12)
    labels = [str(label) for label in row_labels or []][:rows]
    margin = max((_text_width(label, font) for label in labels), default=0)
    margin = margin + LABEL_MARGIN if margin else 0
    canvas = np.zeros(
        (rows * (h + GRID_PADDING) + GRID_PADDING, margin + per_row * (w + GRID_PADDING) + GRID_PADDING, c),
        np.uint8,
    )
    for i in range(n):
        top = GRID_PADDING + (i // per_row) * (h + GRID_PADDING)
        left = margin + GRID_PADDING + (i % per_row) * (w + GRID_PADDING)
        canvas[top : top + h, left : left + w] = array[i]
    if labels:
        picture = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
        draw = ImageDraw.Draw(picture)
        for r, label in enumerate(labels):
            middle = GRID_PADDING + r * (h + GRID_PADDING) + h / 2
            draw.text((margin - LABEL_MARGIN // 2, middle), label, fill="white", font=font, anchor="rm")
        canvas = np.asarray(picture).reshape(canvas.shape)
    return encode_png(canvas, compress_level=6)


def _text_width(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    left, _, right, _ = font.getbbox(text)
    return math.ceil(right - left)


def encode_png(image_hwc_uint8: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of one (H, W), (H, W, 1) or (H, W, 3) uint8 image; fast by default (bulk outputs)."""
    array = np.asarray(image_hwc_uint8)
    bad_channels = array.ndim == 3 and array.shape[-1] not in (1, 3)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or bad_channels:
        raise ValueError(f"expected a uint8 (H, W[, 1|3]) image, got {array.dtype} {array.shape}")
    return encode_pngs(array.reshape(1, *array.shape[:2], -1), compress_level)[0]


def encode_pngs(images_nhwc: np.ndarray, compress_level: int = 1) -> list[bytes]:
    """PNG bytes of each image of a uint8 (N, H, W, C) batch, C in {1, 3}.

    Written directly (signature, IHDR, one IDAT, IEND) rather than through PIL: bulk generation encodes
    every image it makes, and PIL took most of a small GAN's forward pass per image (BENCHMARKS.md,
    "Throughput"). Every row uses PNG's Sub filter, computed for the whole batch at
    once: each byte minus the same channel of the pixel to its left, which compresses smooth images better
    than none."""
    array = np.asarray(images_nhwc)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, H, W, 1|3) images, got {array.dtype} {array.shape}")
    n, h, w, c = array.shape
    rows = array.reshape(n, h, w * c)
    filtered = np.empty((n, h, 1 + w * c), np.uint8)
    filtered[:, :, 0] = PNG_FILTER_SUB
    filtered[:, :, 1 : 1 + c] = rows[:, :, :c]
    np.subtract(rows[:, :, c:], rows[:, :, :-c], out=filtered[:, :, 1 + c :])  # wraps modulo 256
    header = PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, PNG_COLOUR[c], 0, 0, 0))
    return [
        header + _png_chunk(b"IDAT", deflate.compress(image.tobytes(), compress_level)) + PNG_IEND
        for image in filtered
    ]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR = {1: 0, 3: 2}  # channels -> PNG colour type (greyscale, truecolour)
PNG_FILTER_SUB = 1
PNG_IEND = _png_chunk(b"IEND", b"")


def resize_images(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size): bilinear, antialiased (no aliasing when shrinking)."""
    target = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == target:
        return images
    resized = F.interpolate(images.float(), size=target, mode="bilinear", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------------
# Loss curves


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Debiased exponential moving average (as TensorBoard draws it); the window grows with the series."""
    if weight is None:
        weight = min(0.95, max(0.0, 1.0 - 10.0 / max(len(values), 1)))
    out, average, norm = [], 0.0, 0.0
    for value in values:
        average = weight * average + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(average / norm)
    return out


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round-numbered tick positions covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # no FreeType: the bitmap font
        return ImageFont.load_default()


def loss_curve_png(
    history: dict[str, list[float]],
    *,
    steps: Sequence[float] | None = None,
    resumed_at: Sequence[float] = (),
    y_label: str = "loss",
    width: int = 640,
    height: int = 360,
) -> bytes:
    """A line chart of each named series against the training step: faint raw values, a smoothed line
    over them, axes with round-number ticks and names, a legend, and a dashed vertical line at each step
    where training resumed after an interruption. Non-finite values are skipped.

    `steps[i]` is the step of every series' i-th value (the series are recorded together, every N
    steps); without it the i-th value is taken to be step i + 1."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font(12)
    left, right, top, bottom = 76, width - 16, 16, height - 36

    def step_of(i: int) -> float:
        return float(steps[i]) if steps is not None and i < len(steps) else float(i + 1)

    series = {
        name: [(step_of(i), float(v)) for i, v in enumerate(values) if math.isfinite(float(v))]
        for name, values in history.items()
    }
    points = [p for values in series.values() for p in values]
    if not points:
        draw.text((left, height // 2), "no loss values recorded", fill="black", font=font)
        return encode_png(np.asarray(image), compress_level=6)

    x_max = max(1.0, max(x for x, _ in points), *(float(r) for r in resumed_at))
    y_low, y_high = min(v for _, v in points), max(v for _, v in points)
    pad = (y_high - y_low) * 0.05 or abs(y_high) * 0.05 or 1.0
    y_low, y_high = y_low - pad, y_high + pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (right - left) * x / x_max,
            bottom - (bottom - top) * (y - y_low) / (y_high - y_low),
        )

    for tick in _nice_ticks(y_low, y_high):
        _, y = to_px(0, tick)
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.text((left - 6, y), _label(tick), fill="black", font=font, anchor="rm")
    for tick in _nice_ticks(0, x_max):
        x, _ = to_px(tick, y_low)
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x, bottom + 6), _label(tick), fill="black", font=font, anchor="mt")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    draw.text(((left + right) / 2, height - 4), "training step", fill="black", font=font, anchor="md")
    _vertical_text(image, y_label, (4, (top + bottom) // 2), font)
    for resumed in resumed_at:
        x, _ = to_px(float(resumed), y_low)
        for y in range(top, int(bottom), 8):  # dashed
            draw.line([(x, y), (x, min(y + 4, bottom))], fill=(120, 120, 120), width=1)
        draw.text((x + 3, top), "resumed", fill=(90, 90, 90), font=font, anchor="lt")

    for k, (name, values) in enumerate(series.items()):
        if not values:
            continue
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        faint = tuple(int(c + (255 - c) * 0.7) for c in colour)
        raw = [to_px(i, v) for i, v in values]
        smoothed = [to_px(i, v) for (i, _), v in zip(values, smooth([v for _, v in values]), strict=True)]
        if len(raw) > 1:
            draw.line(raw, fill=faint, width=1)
            draw.line(smoothed, fill=colour, width=2)
        else:
            x, y = raw[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        legend_y = top + 4 + 16 * k
        draw.line([(right - 130, legend_y + 6), (right - 112, legend_y + 6)], fill=colour, width=3)
        draw.text((right - 106, legend_y), name[:18], fill="black", font=font)
    return encode_png(np.asarray(image), compress_level=6)


def _vertical_text(
    image: Image.Image,
    text: str,
    left_middle: tuple[int, int],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    """Write `text` rotated a quarter turn (reading bottom to top), its left edge at x, centred on y."""
    box = font.getbbox(text)
    label = Image.new("RGB", (int(box[2]) + 2, int(box[3]) + 2), "white")
    ImageDraw.Draw(label).text((1, 1), text, fill="black", font=font)
    label = label.rotate(90, expand=True)
    x, y = left_middle
    image.paste(label, (x, max(0, y - label.height // 2)))
