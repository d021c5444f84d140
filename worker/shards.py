"""Bulk image outputs: PNGs packed into a few tar shards, and a manifest streamed to disk.

A generation job of 100,000 images writes `shards/00000.tar`, `shards/00001.tar`, ... (members named by
the item's index, `000000123.png`), each uploaded in the background as soon as it is full, so memory and
disk hold at most a couple of shards whatever the count. The manifest is written item by item to a file.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from worker.outputs import JobOutputs, StoredObject

MAX_PENDING_UPLOADS = 2  # shards closed but not yet uploaded; bounds the local disk used


def member_name(index: int) -> str:
    return f"{index:09d}.png"


def shard_name(number: int) -> str:
    return f"shards/{number:05d}.tar"


class ShardWriter:
    """`add(index, png)` appends one image; full shards upload while the next one fills."""

    def __init__(self, outputs: JobOutputs, shard_size: int, workdir: Path) -> None:
        if shard_size < 1:
            raise ValueError("shard_size must be positive")
        self.outputs = outputs
        self.shard_size = shard_size
        self.workdir = workdir
        self.shards: list[StoredObject] = []
        self._number = -1
        self._count = 0  # images in the open shard
        self._tar: tarfile.TarFile | None = None
        self._path: Path | None = None
        self._uploads: deque[Future[StoredObject]] = deque()
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-upload")

    def add(self, index: int, png: bytes) -> tuple[str, str]:
        """Store one PNG; returns (shard name, member name) for the manifest."""
        if self._tar is None:
            self._open()
        assert self._tar is not None
        info = tarfile.TarInfo(member_name(index))
        info.size = len(png)
        info.mode = 0o644
        info.mtime = 0  # identical inputs give identical archives
        self._tar.addfile(info, io.BytesIO(png))
        self._count += 1
        names = (shard_name(self._number), info.name)
        if self._count >= self.shard_size:
            self._seal()
        return names

    def close(self) -> list[StoredObject]:
        """Seal the last shard and wait for every upload; returns the shards in order."""
        try:
            if self._tar is not None:
                self._seal()
            while self._uploads:
                self.shards.append(self._uploads.popleft().result())
        finally:
            self._uploader.shutdown(wait=True)
        return self.shards

    def discard(self) -> None:
        """Stop without uploading the open shard (the job failed or was canceled)."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        self._uploader.shutdown(wait=True, cancel_futures=True)

    def _open(self) -> None:
        self._number += 1
        self._count = 0
        self._path = self.workdir / f"shard-{self._number:05d}.tar"
        # Open across add() calls, closed by _seal(); USTAR: no per-member extended headers.
        self._tar = tarfile.open(self._path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115

    def _seal(self) -> None:
        assert self._tar is not None and self._path is not None
        self._tar.close()
        path, name = self._path, shard_name(self._number)
        self._tar, self._path = None, None
        while len(self._uploads) >= MAX_PENDING_UPLOADS:
            self.shards.append(self._uploads.popleft().result())
        self._uploads.append(self._uploader.submit(self._upload, name, path))

    def _upload(self, name: str, path: Path) -> StoredObject:
        try:
            return self.outputs.put_file(name, path)
        finally:
            path.unlink(missing_ok=True)


class ManifestWriter:
    """manifest.json as `{<header fields>, "items": [...]}`, written one item at a time."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        if "items" in header:
            raise ValueError("the header must not hold items")
        self.path = path
        self.count = 0
        self._file = path.open("w", encoding="utf-8")
        opening = json.dumps(header, sort_keys=True)
        self._file.write(opening[:-1] + (", " if header else "") + '"items": [')

    def add(self, item: dict[str, Any]) -> None:
        self._file.write(("\n  " if self.count == 0 else ",\n  ") + json.dumps(item, sort_keys=True))
        self.count += 1

    def close(self) -> Path:
        if not self._file.closed:
            self._file.write("\n]}\n")
            self._file.close()
        return self.path
