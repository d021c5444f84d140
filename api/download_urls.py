"""Download URLs minted once per object and reused while they still have most of their life left.

Presigning is the costliest part of a job view (a SigV4 signature per artifact); a client polling a
finished job every second would otherwise pay for a fresh signature on every poll. Time is cut into
epochs of `ttl / 2`; a URL is minted once per epoch and handed out only within it, so every URL a client
receives stays valid for at least `ttl / 2` seconds after its epoch ends.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol


class UrlSigner(Protocol):
    ttl: int

    def download_url(self, key: str, filename: str | None = None) -> str: ...


class DownloadUrls:
    """`download_url(key, filename)` with a bounded per-process cache in front of the store's signer."""

    def __init__(self, signer: UrlSigner, max_entries: int = 50_000, clock: Callable[[], float] = time.time):
        self.signer = signer
        self.reuse_seconds = signer.ttl / 2
        self.max_entries = max_entries
        self.clock = clock
        self._urls: OrderedDict[tuple[str, str | None], tuple[int, str]] = OrderedDict()
        self._lock = threading.Lock()

    def epoch(self) -> int:
        """The current reuse period: URLs are minted afresh in each (every process agrees on it)."""
        return int(self.clock() // self.reuse_seconds)

    def download_url(self, key: str, filename: str | None = None) -> str:
        epoch = self.epoch()
        slot = (key, filename)
        with self._lock:
            cached = self._urls.get(slot)
            if cached is not None and cached[0] == epoch:
                self._urls.move_to_end(slot)
                return cached[1]
        url = self.signer.download_url(key, filename)
        with self._lock:
            self._urls[slot] = (epoch, url)
            self._urls.move_to_end(slot)
            while len(self._urls) > self.max_entries:
                self._urls.popitem(last=False)
        return url
