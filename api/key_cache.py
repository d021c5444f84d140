"""Authenticated API keys remembered in-process for a few seconds, so a poll costs no SQL round trip
for its key.

Only live keys are remembered, by the sha256 of the key (the plaintext is never kept). A revoked key
keeps working in an API process for at most `ttl` seconds after the revocation commits: the bound is the
setting `api_key_cache_seconds` (0 turns the cache off).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownKey:
    id: uuid.UUID
    tenant_id: uuid.UUID


class KeyCache:
    """A bounded LRU of key hash -> KnownKey, each entry trusted for `ttl` seconds after its lookup."""

    def __init__(self, ttl: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, KnownKey]] = OrderedDict()
        self._lock = threading.Lock()  # gunicorn threads share one cache per process

    def get(self, key_hash: str) -> KnownKey | None:
        if self.ttl <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key_hash)
            if entry is None:
                return None
            looked_up_at, known = entry
            if self.clock() - looked_up_at >= self.ttl:
                del self._entries[key_hash]
                return None
            self._entries.move_to_end(key_hash)
            return known

    def put(self, key_hash: str, known: KnownKey) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[key_hash] = (self.clock(), known)
            self._entries.move_to_end(key_hash)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
