"""Bulk image outputs: PNGs packed into a few tar shards, and a manifest streamed to disk.

A generation job of 100,000 images writes `shards/00000.tar`, `shards/00001.tar`, ... (members named by
the item's index, `000000123.png`), each uploaded in the background as soon as it is full, so memory and
disk hold at most a couple of shards whatever the count. The manifest is written item by item to a file.

The archives are plain USTAR, byte for byte what `tarfile` writes for the same members (a test checks),
but each member header is filled into a template here: `tarfile`'s general-purpose header code cost 29 us
an image, a quarter of a small GAN's forward pass (0.9 us now; measured on 2 CPU cores).
"""

from __future__ import annotations

import json
import tarfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from worker.outputs import JobOutputs, StoredObject

MAX_PENDING_UPLOADS = 2  # shards closed but not yet uploaded; bounds the local disk used
BLOCK = tarfile.BLOCKSIZE  # 512: headers and member data are padded to whole blocks
RECORD = tarfile.RECORDSIZE  # 10,240: the archive is padded to whole records, as tarfile does


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
        self._file: BinaryIO | None = None
        self._written = 0  # bytes in the open shard
        self._path: Path | None = None
        self._uploads: deque[Future[StoredObject]] = deque()
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-upload")

    def add(self, index: int, png: bytes) -> tuple[str, str]:
        """Store one PNG; returns (shard name, member name) for the manifest."""
        if self._file is None:
            self._open()
        assert self._file is not None
        name = member_name(index)
        self._file.write(member_header(name, len(png)))
        self._file.write(png)
        padding = -len(png) % BLOCK
        self._file.write(bytes(padding))
        self._written += BLOCK + len(png) + padding
        self._count += 1
        names = (shard_name(self._number), name)
        if self._count >= self.shard_size:
            self._seal()
        return names

    def close(self) -> list[StoredObject]:
        """Seal the last shard and wait for every upload; returns the shards in order."""
        try:
            if self._file is not None:
                self._seal()
            while self._uploads:
                self.shards.append(self._uploads.popleft().result())
        finally:
            self._uploader.shutdown(wait=True)
        return self.shards

    def discard(self) -> None:
        """Stop without uploading the open shard (the job failed or was canceled)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._uploader.shutdown(wait=True, cancel_futures=True)

    def _open(self) -> None:
        self._number += 1
        self._count = 0
        self._written = 0
        self._path = self.workdir / f"shard-{self._number:05d}.tar"
        self._file = self._path.open("wb")  # open across add() calls, closed by _seal()

    def _seal(self) -> None:
        assert self._file is not None and self._path is not None
        end = self._written + 2 * BLOCK  # two zero blocks end the archive
        self._file.write(bytes(2 * BLOCK + -end % RECORD))
        self._file.close()
        path, name = self._path, shard_name(self._number)
        self._file, self._path = None, None
        while len(self._uploads) >= MAX_PENDING_UPLOADS:
            self.shards.append(self._uploads.popleft().result())
        self._uploads.append(self._uploader.submit(self._upload, name, path))

    def _upload(self, name: str, path: Path) -> StoredObject:
        try:
            return self.outputs.put_file(name, path)
        finally:
            path.unlink(missing_ok=True)


def member_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header of a regular file `name` (ASCII, < 100 bytes) of `size` bytes, mode 0644,
    owner 0:0, mtime 0 (identical inputs give identical archives)."""
    encoded = name.encode("ascii")
    size_field = b"%011o\0" % size
    checksum = _HEADER_SUM + sum(encoded) + sum(size_field)
    return b"".join((
        encoded, bytes(100 - len(encoded)), _HEADER_MODE_OWNER, size_field, _HEADER_MTIME,
        b"%06o\0 " % checksum, _HEADER_TAIL,
    ))  # fmt: skip


# The constant parts of a member header; the checksum field counts as eight spaces while summing.
_HEADER_MODE_OWNER = b"0000644\0" + b"0000000\0" * 2
_HEADER_MTIME = b"00000000000\0"
# Type flag "0" (a regular file), no link target, the USTAR magic; no owner names, device numbers or prefix.
_HEADER_TAIL = (b"0" + bytes(100) + b"ustar\x0000").ljust(BLOCK - 156, b"\0")
_HEADER_SUM = sum(_HEADER_MODE_OWNER) + sum(_HEADER_MTIME) + sum(b" " * 8) + sum(_HEADER_TAIL)


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
