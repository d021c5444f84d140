"""Shard archives and the streamed manifest: names, ordering, bounded uploads, valid JSON."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from pathlib import Path

import pytest

from shared.settings import Settings
from shared.storage import LocalStore
from worker import shards
from worker.outputs import JobOutputs, file_sha256
from worker.shards import ManifestWriter, ShardWriter


@pytest.fixture()
def outputs(tmp_path: Path) -> JobOutputs:
    store = LocalStore(Settings(local_storage_dir=tmp_path / "objects"))
    return JobOutputs(store, uuid.uuid4(), uuid.uuid4(), attempt=1)


def _members(outputs: JobOutputs, name: str) -> dict[str, bytes]:
    data = outputs.store.get_bytes(outputs.key(name))
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]


def test_images_fill_shards_in_order(outputs: JobOutputs, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    writer = ShardWriter(outputs, shard_size=3, workdir=workdir)
    placed = [writer.add(100 + i, f"png-{i}".encode()) for i in range(7)]
    stored = writer.close()

    assert [s.name for s in stored] == ["shards/00000.tar", "shards/00001.tar", "shards/00002.tar"]
    assert placed[0] == ("shards/00000.tar", "000000100.png")
    assert placed[6] == ("shards/00002.tar", "000000106.png")
    assert list(_members(outputs, "shards/00001.tar").items()) == [
        ("000000103.png", b"png-3"),
        ("000000104.png", b"png-4"),
        ("000000105.png", b"png-5"),
    ]
    assert [s.name for s in outputs.stored] == [s.name for s in stored]
    local = outputs.store.path(stored[2].key)  # type: ignore[attr-defined]
    assert stored[2].sha256 == file_sha256(local) and stored[2].size == local.stat().st_size
    assert list(workdir.iterdir()) == []  # uploaded shards are removed locally


def test_identical_inputs_give_identical_archives(outputs: JobOutputs, tmp_path: Path) -> None:
    hashes = []
    for run in range(2):
        workdir = tmp_path / f"w{run}"
        workdir.mkdir()
        writer = ShardWriter(outputs, shard_size=10, workdir=workdir)
        writer.add(0, b"same")
        hashes.append(writer.close()[0].sha256)
    assert hashes[0] == hashes[1]


def test_archives_are_byte_for_byte_what_tarfile_writes(outputs: JobOutputs, tmp_path: Path) -> None:
    # Member sizes around block boundaries, and enough members to cross a 10,240-byte record.
    members = [(i, bytes([i % 251]) * size) for i, size in enumerate((0, 1, 511, 512, 513, 4000, 9000))]
    workdir = tmp_path / "work"
    workdir.mkdir()
    writer = ShardWriter(outputs, shard_size=len(members), workdir=workdir)
    for index, data in members:
        writer.add(index, data)
    ours = outputs.store.get_bytes(writer.close()[0].key)

    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for index, data in members:
            info = tarfile.TarInfo(shards.member_name(index))
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    assert ours == expected.getvalue()


def test_uploads_in_flight_are_bounded(outputs: JobOutputs, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    seen: list[int] = []
    writer = ShardWriter(outputs, shard_size=1, workdir=workdir)
    for i in range(20):
        writer.add(i, b"x")
        seen.append(len(list(workdir.iterdir())))
    assert len(writer.close()) == 20
    assert max(seen) <= shards.MAX_PENDING_UPLOADS


def test_discard_uploads_nothing_more(outputs: JobOutputs, tmp_path: Path) -> None:
    writer = ShardWriter(outputs, shard_size=5, workdir=tmp_path)
    writer.add(0, b"x")
    writer.discard()
    assert outputs.stored == []


def test_manifest_is_valid_json_with_items_in_order(tmp_path: Path) -> None:
    writer = ManifestWriter(tmp_path / "manifest.json", {"model_id": "m", "seed": 7})
    for i in range(3):
        writer.add({"index": i, "seed": i * 11, "label": None, "shard": "shards/00000.tar"})
    document = json.loads(writer.close().read_text())
    assert document["model_id"] == "m" and document["seed"] == 7
    assert [item["index"] for item in document["items"]] == [0, 1, 2]
    assert writer.count == 3


def test_empty_manifest(tmp_path: Path) -> None:
    assert json.loads(ManifestWriter(tmp_path / "m.json", {}).close().read_text()) == {"items": []}
    with pytest.raises(ValueError):
        ManifestWriter(tmp_path / "n.json", {"items": []})
