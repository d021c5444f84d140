"""Image sets the engine trains on: the built-in data sets and user uploads, as uint8 `ImageSet`s.

Built-in
- "fashion-mnist": the Debian package's IDX files (`apt-get install -y dataset-fashion-mnist`) in
  /usr/share/datasets/fashion-mnist/, or in `root` (the worker passes its settings' fashion_mnist_dir).
  28x28 grey, 10 classes, 60 000 train / 10 000 test.
- "digits": scikit-learn's 8x8 handwritten digits (1 797 images, 0..16 scaled to 0..255), split 80/20 into
  train/test by a fixed permutation, and resized to 28x28 by default so every model family can use it.

Uploads: see `shared.datasets` for the accepted formats and policies; `load_upload` validates with
`inspect_upload`, then decodes, converts channels and scales + center-crops to the training size.
"""

from __future__ import annotations

import functools
import gzip
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from shared.datasets import DatasetError, DatasetSummary, inspect_upload, read_npz_labels, zip_layout
from worker.engine.images import resize_images
from worker.engine.imageset import ImageSet

__all__ = ["DatasetError", "load_builtin", "load_upload", "split_train_val"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension
DIGITS_TEST_FRACTION = 0.2
DIGITS_DEFAULT_SIZE = 28
RESIZE_CHUNK = 4096  # images resized at once: bounds the float buffer


def parse_idx(raw: bytes, magic: int) -> np.ndarray:
    """An IDX file's uint8 array: big-endian magic, one big-endian uint32 per dimension, then the data."""
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != magic:
        raise DatasetError(f"not an IDX file with magic number {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DatasetError(f"IDX file length {len(raw)} does not match its shape {shape}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


@functools.lru_cache(maxsize=8)
def _fashion_mnist(directory: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_file, labels_file = (Path(directory) / name for name in FASHION_MNIST_FILES[split])
    for file in (images_file, labels_file):
        if not file.is_file():
            raise DatasetError(
                f"Fashion-MNIST file {file} is missing: install it with "
                "`apt-get install -y dataset-fashion-mnist` or set GENQ_FASHION_MNIST_DIR"
            )
    images = parse_idx(gzip.decompress(images_file.read_bytes()), IDX_IMAGES_MAGIC)
    labels = parse_idx(gzip.decompress(labels_file.read_bytes()), IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DatasetError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


@functools.lru_cache(maxsize=2)
def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # only this data set needs scikit-learn

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    order = np.random.default_rng(0).permutation(len(images))
    cut = round(len(images) * DIGITS_TEST_FRACTION)
    index = np.sort(order[:cut] if split == "test" else order[cut:])
    return torch.from_numpy(images[index]).unsqueeze(1), torch.from_numpy(
        digits.target[index].astype(np.int64)
    )


def load_builtin(
    name: str, split: str = "train", size: int | None = None, root: str | None = None
) -> ImageSet:
    """A built-in data set's split as an ImageSet, resized to `size` when given (digits default: 28)."""
    if split not in ("train", "test"):
        raise DatasetError(f"split: must be 'train' or 'test', not {split!r}")
    if name == "fashion-mnist":
        images, labels = _fashion_mnist(str(root or FASHION_MNIST_DIR), split)
        classes = FASHION_MNIST_CLASSES
    elif name == "digits":
        images, labels = _digits(split)
        classes = [str(d) for d in range(10)]
        size = size or DIGITS_DEFAULT_SIZE
    else:
        raise DatasetError(f"dataset: unknown built-in data set {name!r} (fashion-mnist, digits)")
    resized = _resize_chunked(images, size) if size else images
    # The cache holds the parsed arrays; callers get their own copy to change as they like.
    return ImageSet(resized.clone() if resized is images else resized, labels.clone(), list(classes), name)


def _resize_chunked(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return torch.cat(
        [resize_images(images[i : i + RESIZE_CHUNK], size) for i in range(0, len(images), RESIZE_CHUNK)]
    )


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, channels, H, W): grey is repeated; colour becomes ITU-R 601 luma (as PIL)."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
    return (
        ((images.int() * weights).sum(1, keepdim=True) + 500).div(1000, rounding_mode="floor").to(torch.uint8)
    )


def _center_square(images: torch.Tensor) -> torch.Tensor:
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return images[..., top : top + side, left : left + side]


def _decode(archive: zipfile.ZipFile, name: str, size: int, mode: str) -> np.ndarray:
    try:
        with archive.open(name) as stream, Image.open(stream) as image:
            image = ImageOps.exif_transpose(image).convert(mode)
            # Shorter side scaled to `size`, center cropped (PIL's resize antialiases when shrinking).
            fitted = ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"{name}: cannot be decoded as an image ({error})") from None
    array = np.array(fitted, dtype=np.uint8)  # a writable copy for torch.from_numpy
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def load_upload(
    path: str | Path,
    size: int | None = None,
    channels: int | None = None,
    summary: DatasetSummary | None = None,
) -> ImageSet:
    """An uploaded .zip or .npz as an ImageSet of `size` x `size` (default: the summary's default size) with
    `channels` (default: RGB if any image is colour). Raises DatasetError with a message for the user."""
    summary = summary or inspect_upload(path)
    size = size or summary.default_size
    channels = channels or summary.channels
    if channels not in (1, 3):
        raise DatasetError(f"channels: must be 1 or 3, not {channels}")
    if summary.format == "npz":
        with np.load(path, allow_pickle=False) as data:
            array = data["images"]
        images = torch.from_numpy(array if array.ndim == 4 else array[..., None]).permute(0, 3, 1, 2)
        chunks = []
        for i in range(0, len(images), RESIZE_CHUNK):
            chunk = convert_channels(_center_square(images[i : i + RESIZE_CHUNK]), channels)
            chunks.append(resize_images(chunk.contiguous(), size))
        labels_np, class_names = read_npz_labels(path, len(images))
        labels = torch.from_numpy(labels_np) if labels_np is not None else None
        return ImageSet(torch.cat(chunks), labels, class_names, Path(path).stem)
    with zipfile.ZipFile(path) as archive:
        layout = zip_layout(archive.namelist())
        images = torch.empty((len(layout.names), channels, size, size), dtype=torch.uint8)
        mode = "RGB" if channels == 3 else "L"
        for i, name in enumerate(layout.names):
            images[i] = torch.from_numpy(_decode(archive, name, size, mode))
    labels = torch.tensor(layout.labels, dtype=torch.int64) if layout.labels is not None else None
    return ImageSet(images, labels, layout.class_names, Path(path).stem)


def split_train_val(data: ImageSet, fraction: float = 0.1, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """A deterministic (train, validation) split: `fraction` of the items (at least one when there are two or
    more), chosen by a permutation seeded with `seed`; both keep the original item order."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError("fraction must be in [0, 1)")
    n = len(data)
    n_val = min(max(1, round(n * fraction)), n - 1) if fraction > 0 and n >= 2 else 0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    val_index, train_index = order[:n_val].sort().values, order[n_val:].sort().values
    return data.subset(train_index), data.subset(val_index)
