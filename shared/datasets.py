"""Checking an uploaded data set without decoding it: the API runs this before accepting an upload, and the
worker runs it again before building tensors. PIL, NumPy and zipfile only (the API image has no torch).

Accepted uploads
- A .zip of PNG/JPEG images. Images at the top level (or all in one folder) are unlabelled; images in one
  sub-folder per class are labelled by folder, classes in sorted name order. `__MACOSX/` and dot-files are
  skipped; any other file is an error, as are absolute names and names containing '..'.
- An .npz with `images`, uint8 of shape (N, H, W) or (N, H, W, C) with C in {1, 3}; optional `labels`
  (N,) non-negative integers and optional `class_names` (K,) strings (default: "0" .. str(max label)).

Policies
- Channels: RGB if any image is colour, else greyscale (colour images are never silently made grey).
  Alpha is dropped.
- Default training size: 28 when the largest side is <= 28 px, 32 when <= 32 px, else 64.
"""

from __future__ import annotations

import posixpath
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.specs import IMAGE_SIZES

MAX_IMAGES = 200_000
MAX_DECODED_BYTES = 2 * 1024**3  # all images decoded at their own size and channels
MAX_IMAGE_PIXELS = 4096 * 4096  # one image; PIL would warn about decompression bombs above ~89 M
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


class DatasetError(ValueError):
    """An upload or built-in data set cannot be used; the message says why and what to change."""


@dataclass
class DatasetSummary:
    format: str  # "zip" or "npz"
    count: int
    channels: int  # 1 or 3 after the channel policy
    min_side: int
    max_side: int
    sizes: dict[str, int]  # "HxW" -> number of images, the most common first (at most 10 entries)
    class_names: list[str]  # empty when unlabelled
    class_counts: list[int]  # images per class, aligned with class_names
    default_size: int  # 28, 32 or 64
    decoded_bytes: int

    @property
    def labelled(self) -> bool:
        return bool(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ZipLayout:
    """Which members of a zip are images, in load order, and their labels from class folders."""

    names: list[str]
    labels: list[int] | None
    class_names: list[str] = field(default_factory=list)


def default_size(max_side: int) -> int:
    return next((size for size in IMAGE_SIZES[:-1] if max_side <= size), IMAGE_SIZES[-1])


def _skipped(name: str) -> bool:
    parts = name.split("/")
    return name.endswith("/") or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts if p)


def _check_name(name: str) -> None:
    normalised = name.replace("\\", "/")
    parts = normalised.split("/")
    if normalised.startswith("/") or ".." in parts or (len(parts[0]) == 2 and parts[0][1] == ":"):
        raise DatasetError(f"zip entry {name!r}: absolute paths and '..' are not allowed")


def zip_layout(names: list[str]) -> ZipLayout:
    """Image members in sorted order, labelled by class folder when the images sit in several folders."""
    images = []
    for name in names:
        _check_name(name)
        if _skipped(name):
            continue
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            raise DatasetError(f"zip entry {name!r}: not an image (expected {', '.join(IMAGE_EXTENSIONS)})")
        images.append(name)
    if not images:
        raise DatasetError("the zip contains no images (expected .png, .jpg or .jpeg files)")
    images.sort()
    folders = [posixpath.dirname(name).split("/") if "/" in name else [] for name in images]
    if len({tuple(f) for f in folders}) == 1:
        return ZipLayout(images, None)
    common = 0  # strip a shared root folder such as "mydata/"
    while all(len(f) > common for f in folders) and len({f[common] for f in folders}) == 1:
        common += 1
    if any(len(f) != common + 1 for f in folders):
        raise DatasetError(
            "images must sit at the top level of the zip (unlabelled) or in one folder per class "
            "(labelled), not both and not deeper"
        )
    class_names = sorted({f[common] for f in folders})
    index = {name: i for i, name in enumerate(class_names)}
    return ZipLayout(images, [index[f[common]] for f in folders], class_names)


def _summary(
    fmt: str,
    shapes: list[tuple[int, int]],
    channels: int,
    decoded: int,
    labels: list[int] | None,
    names: list[str],
) -> DatasetSummary:
    if not shapes:
        raise DatasetError("the data set contains no images")
    if len(shapes) > MAX_IMAGES:
        raise DatasetError(f"{len(shapes)} images: at most {MAX_IMAGES} are accepted")
    if decoded > MAX_DECODED_BYTES:
        raise DatasetError(
            f"the images take {decoded / 1024**3:.1f} GiB decoded: at most {MAX_DECODED_BYTES // 1024**3} GiB"
        )
    counts = Counter(f"{h}x{w}" for h, w in shapes)
    max_side = max(max(s) for s in shapes)
    per_class = Counter(labels or [])
    return DatasetSummary(
        format=fmt,
        count=len(shapes),
        channels=channels,
        min_side=min(min(s) for s in shapes),
        max_side=max_side,
        sizes=dict(counts.most_common(10)),
        class_names=names if labels is not None else [],
        class_counts=[per_class.get(i, 0) for i in range(len(names))] if labels is not None else [],
        default_size=default_size(max_side),
        decoded_bytes=decoded,
    )


def _inspect_zip(path: Path) -> DatasetSummary:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetError(f"not a readable zip file: {error}") from None
    with archive:
        layout = zip_layout(archive.namelist())
        if len(layout.names) > MAX_IMAGES:
            raise DatasetError(f"{len(layout.names)} images: at most {MAX_IMAGES} are accepted")
        if sum(archive.getinfo(n).file_size for n in layout.names) > MAX_DECODED_BYTES:
            raise DatasetError(f"the zip holds more than {MAX_DECODED_BYTES // 1024**3} GiB of files")
        shapes, colour, decoded = [], False, 0
        for name in layout.names:
            with archive.open(name) as stream:
                width, height, mode = image_header(stream, name)
            shapes.append((height, width))
            bands = 1 if mode in GREY_MODES else 3
            colour = colour or bands == 3
            decoded += width * height * bands
    return _summary("zip", shapes, 3 if colour else 1, decoded, layout.labels, layout.class_names)


def image_header(stream: Any, name: str) -> tuple[int, int, str]:
    """(width, height, mode) from an image's header; DatasetError naming the file when it is no image."""
    try:
        with Image.open(stream) as image:
            width, height, mode = image.width, image.height, image.mode
            if mode in ("P", "PA") and _grey_palette(image.getpalette()):
                mode = "L"  # a palette of greys: the image is greyscale
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # PIL refuses (or, under warnings-as-errors, warns about) a header declaring a huge image before
        # reading any pixels; ours is the stricter limit either way.
        raise DatasetError(
            f"{name}: its header declares more than {MAX_IMAGE_PIXELS} pixels (at most {MAX_IMAGE_PIXELS})"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"{name}: cannot be decoded as an image ({error})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise DatasetError(f"{name}: {width}x{height} pixels is too large (at most {MAX_IMAGE_PIXELS})")
    return width, height, mode


def _grey_palette(palette: list[int] | None) -> bool:
    return palette is not None and all(
        palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette), 3)
    )


def _npy_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an .npy member's header, checked against the member's size: a header claiming
    more data than the member holds is refused here, not when a worker loads it."""
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        header_bytes = stream.tell()
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise ValueError(f"shape {shape}")
    declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    held = archive.getinfo(member).file_size - header_bytes
    if declared > held:
        name = member.removesuffix(".npy")
        raise DatasetError(
            f"{name}: the header declares shape {tuple(shape)} ({declared} bytes) but the file holds "
            f"{max(held, 0)} bytes"
        )
    return shape, dtype


def read_npz_labels(path: str | Path, count: int) -> tuple[np.ndarray | None, list[str]]:
    """Validated (labels (N,) int64 or None, class names) of an .npz upload."""
    with np.load(path, allow_pickle=False) as data:
        labels = data["labels"] if "labels" in data.files else None
        names = data["class_names"] if "class_names" in data.files else None
    if labels is None:
        return None, []
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(f"labels: expected a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(labels) != count:
        raise DatasetError(f"labels: {len(labels)} labels for {count} images")
    if len(labels) and labels.min() < 0:
        raise DatasetError("labels: must be non-negative")
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    if names is None:
        return labels.astype(np.int64), [str(i) for i in range(num_classes)]
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) < num_classes:
        raise DatasetError(
            f"class_names: expected at least {num_classes} strings, got {names.dtype} {names.shape}"
        )
    return labels.astype(np.int64), [str(n) for n in names]


def _inspect_npz(path: Path) -> DatasetSummary:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetError(f"not a readable .npz file: {error}") from None
    with archive:
        if "images.npy" not in archive.namelist():
            raise DatasetError("the .npz has no 'images' array")
        try:
            shape, dtype = _npy_header(archive, "images.npy")
        except DatasetError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise DatasetError(f"images: unreadable array header ({error})") from None
    if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
        raise DatasetError(f"images: expected uint8 (N, H, W) or (N, H, W, 1|3), got {dtype} {shape}")
    count, height, width = shape[:3]
    channels = shape[3] if len(shape) == 4 else 1
    try:
        labels, names = read_npz_labels(path, count)
    except (ValueError, OSError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"the .npz cannot be read: {error}") from None
    decoded = count * height * width * channels
    label_list = labels.tolist() if labels is not None else None
    return _summary("npz", [(height, width)] * count, channels, decoded, label_list, names)


def inspect_upload(path: str | Path) -> DatasetSummary:
    """Validate an upload from its headers (no full decode) and summarise it. Raises DatasetError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path.name}: no such file")
    with path.open("rb") as stream:
        magic = stream.read(4)
    if magic[:2] != b"PK":
        raise DatasetError("uploads must be a .zip of PNG/JPEG images or an .npz array file")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetError(f"not a readable zip or .npz file: {error}") from None
    is_npz = path.suffix.lower() == ".npz" or (names and all(n.endswith(".npy") for n in names))
    return _inspect_npz(path) if is_npz else _inspect_zip(path)
