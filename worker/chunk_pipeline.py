"""Ordered background storing with a bounded backlog: bulk generation stores chunk N (PNG encoding, tar
framing, the manifest, shard uploads) on one thread while the engine generates chunk N+1, so the
generator's forward pass sets the pace.

One thread, so chunks are stored in the order submitted: shards and the manifest are byte for byte what
storing inline writes. At most `depth` submitted chunks are not yet stored (`submit` waits for the
oldest beyond that), so memory stays bounded whatever the job's size. An exception raised while storing
is raised again in the caller's thread by the next `submit`, `poll` or `close`: never swallowed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class ChunkPipeline(Generic[T]):
    """`submit(chunk)` hands a chunk to `store`, which returns how many items it stored; `stored` counts
    the items of chunks finished so far. With `background=False` each chunk is stored inside `submit`
    (no spare core for a second thread)."""

    def __init__(self, store: Callable[[T], int], *, depth: int = 2, background: bool = True) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.stored = 0
        self._store = store
        self._depth = depth
        self._pending: deque[Future[int]] = deque()
        self._thread = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-store") if background else None
        )

    def submit(self, chunk: T) -> None:
        if self._thread is None:
            self.stored += self._store(chunk)
            return
        while len(self._pending) >= self._depth:
            self.stored += self._pending.popleft().result()
        self._pending.append(self._thread.submit(self._store, chunk))
        self.poll()

    def poll(self) -> int:
        """Count the chunks finished since the last call (raising a failed one's error); returns `stored`."""
        while self._pending and self._pending[0].done():
            self.stored += self._pending.popleft().result()
        return self.stored

    def close(self) -> int:
        """Wait for every chunk; returns `stored`."""
        while self._pending:
            self.stored += self._pending.popleft().result()
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        return self.stored

    def abort(self) -> None:
        """Drop the chunks not started and wait for the one being stored (the job failed or was canceled),
        so the caller may discard what it stored into."""
        self._pending.clear()
        if self._thread is not None:
            self._thread.shutdown(wait=True, cancel_futures=True)
