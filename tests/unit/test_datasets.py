"""Upload checks without torch: what the API runs before accepting a data set."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared import datasets
from shared.datasets import DatasetError, default_size, inspect_upload, zip_layout


def png_bytes(size: tuple[int, int] = (20, 20), mode: str = "L", value: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def test_grey_zip_at_top_level_is_unlabelled(tmp_path: Path) -> None:
    summary = inspect_upload(make_zip(tmp_path / "a.zip", {f"{i}.png": png_bytes() for i in range(3)}))
    assert (summary.format, summary.count, summary.channels, summary.default_size) == ("zip", 3, 1, 28)
    assert summary.class_names == [] and not summary.labelled
    assert summary.sizes == {"20x20": 3} and summary.decoded_bytes == 3 * 400
    assert summary.to_dict()["count"] == 3


def test_class_folders_give_sorted_labels_and_any_colour_image_makes_rgb(tmp_path: Path) -> None:
    files = {
        "set/shoe/a.png": png_bytes((30, 30)),
        "set/shoe/b.jpg": png_bytes((30, 30)),
        "set/bag/c.png": png_bytes((30, 30), "RGB"),
        "__MACOSX/set/._c.png": b"junk",
        "set/.DS_Store": b"junk",
    }
    summary = inspect_upload(make_zip(tmp_path / "b.zip", files))
    assert summary.class_names == ["bag", "shoe"] and summary.class_counts == [1, 2]
    assert summary.channels == 3 and summary.default_size == 32


def test_palette_images_of_greys_count_as_grey(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 90).convert("P").save(buffer, format="PNG")
    coloured = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).convert("P").save(coloured, format="PNG")
    assert inspect_upload(make_zip(tmp_path / "p.zip", {"a.png": buffer.getvalue()})).channels == 1
    assert inspect_upload(make_zip(tmp_path / "q.zip", {"a.png": coloured.getvalue()})).channels == 3


def test_zip_layout_rules() -> None:
    assert zip_layout(["b.png", "a.png"]).names == ["a.png", "b.png"]
    assert zip_layout(["only/a.png", "only/b.png"]).labels is None  # one folder: unlabelled
    layout = zip_layout(["x/1.png", "y/2.png", "x/3.png"])
    assert layout.names == ["x/1.png", "x/3.png", "y/2.png"] and layout.labels == [0, 0, 1]
    with pytest.raises(DatasetError, match="one folder per class"):
        zip_layout(["a.png", "cls/b.png"])
    with pytest.raises(DatasetError, match="not an image"):
        zip_layout(["a.png", "notes.txt"])
    for bad in ("../evil.png", "/abs.png", "a/../../b.png", "C:/x.png"):
        with pytest.raises(DatasetError, match="not allowed"):
            zip_layout([bad])


def test_bad_zips_are_rejected_with_clear_messages(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no images"):
        inspect_upload(make_zip(tmp_path / "empty.zip", {}))
    with pytest.raises(DatasetError, match=r"broken\.png: cannot be decoded"):
        inspect_upload(make_zip(tmp_path / "bad.zip", {"ok.png": png_bytes(), "broken.png": b"not a png"}))
    with pytest.raises(DatasetError, match="not allowed"):
        inspect_upload(make_zip(tmp_path / "trick.zip", {"../../etc/x.png": png_bytes()}))
    (tmp_path / "text.zip").write_text("hello")
    with pytest.raises(DatasetError, match=r"\.zip of PNG/JPEG"):
        inspect_upload(tmp_path / "text.zip")
    with pytest.raises(DatasetError, match="no such file"):
        inspect_upload(tmp_path / "missing.zip")


def test_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_zip(tmp_path / "c.zip", {f"{i}.png": png_bytes() for i in range(3)})
    monkeypatch.setattr(datasets, "MAX_IMAGES", 2)
    with pytest.raises(DatasetError, match="at most 2"):
        inspect_upload(path)
    monkeypatch.setattr(datasets, "MAX_IMAGES", 10)
    monkeypatch.setattr(datasets, "MAX_DECODED_BYTES", 1000)
    with pytest.raises(DatasetError, match="GiB"):
        inspect_upload(path)


def test_npz_uploads(tmp_path: Path) -> None:
    images = np.zeros((5, 40, 40, 3), np.uint8)
    np.savez(tmp_path / "rgb.npz", images=images, labels=np.array([0, 1, 2, 1, 0]))
    summary = inspect_upload(tmp_path / "rgb.npz")
    assert (summary.format, summary.count, summary.channels, summary.default_size) == ("npz", 5, 3, 64)
    assert summary.class_names == ["0", "1", "2"] and summary.class_counts == [2, 2, 1]
    names = np.array(["cat", "dog", "eel"])
    np.savez_compressed(
        tmp_path / "grey.npz", images=images[..., 0], labels=np.arange(5) % 3, class_names=names
    )
    summary = inspect_upload(tmp_path / "grey.npz")
    assert summary.channels == 1 and summary.class_names == ["cat", "dog", "eel"]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pixels": np.zeros((2, 8, 8), np.uint8)}, "no 'images'"),
        ({"images": np.zeros((2, 8, 8), np.float32)}, "expected uint8"),
        ({"images": np.zeros((2, 8, 8, 2), np.uint8)}, "expected uint8"),
        ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array([0, 1, 1])}, "3 labels for 2 images"),
        ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array([0, -1])}, "non-negative"),
        ({"images": np.zeros((0, 8, 8), np.uint8)}, "no images"),
        (
            {
                "images": np.zeros((2, 8, 8), np.uint8),
                "labels": np.array([0, 2]),
                "class_names": np.array(["a"]),
            },
            "class_names",
        ),
    ],
)
def test_bad_npz_uploads(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message):
        inspect_upload(tmp_path / "bad.npz")


def test_default_sizes() -> None:
    assert [default_size(s) for s in (8, 28, 29, 32, 33, 500)] == [28, 28, 32, 32, 64, 64]


def test_module_does_not_import_torch() -> None:
    # The API process imports this module and has no torch.
    code = "import sys, shared.datasets; assert 'torch' not in sys.modules"
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2], timeout=60
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height greyscale pixels and holds none (a decompression bomb's
    header: PIL reads the size before any pixel)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "side",
    [
        20_000,  # 400 M pixels: PIL raises DecompressionBombError
        10_000,  # 100 M pixels: PIL warns (an error under warnings-as-errors)
        5_000,  # 25 M pixels: under PIL's limits, over ours
    ],
)
def test_png_declaring_too_many_pixels_is_refused_by_name(tmp_path: Path, side: int) -> None:
    upload = make_zip(tmp_path / "bomb.zip", {"ok.png": png_bytes(), "bomb.png": png_header_only(side, side)})
    with pytest.raises(DatasetError, match=r"bomb\.png: .*pixels"):
        inspect_upload(upload)


def npz_with_lying_header(path: Path, shape: tuple[int, ...], payload: bytes) -> Path:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", header.getvalue() + payload)
    return path


def test_npz_header_claiming_more_images_than_it_holds_is_refused(tmp_path: Path) -> None:
    lying = npz_with_lying_header(tmp_path / "lying.npz", (200_000, 28, 28), bytes(346))
    with pytest.raises(
        DatasetError, match=r"images: the header declares shape \(200000, 28, 28\).* 346 bytes"
    ):
        inspect_upload(lying)
    # The same header over the data it declares is fine.
    honest = npz_with_lying_header(tmp_path / "honest.npz", (3, 28, 28), bytes(3 * 28 * 28))
    assert inspect_upload(honest).count == 3
