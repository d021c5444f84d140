"""The ETags this process last served for jobs and batches, so a poll of an unchanged item answers `304`
without reading SQL.

An entry is trusted only while the change notifications that would drop it are known to arrive:

- it is kept only while this process's pub/sub subscription (api/waiting.py) is confirmed, and the whole
  cache is forgotten the moment the subscription is lost (notifications in the gap are lost with it);
- a read registers itself before it reads the row; a notification for the item, or the subscription
  dropping, while the read is in flight marks it stale, and a stale read stores nothing (so a tag read
  just before a change cannot outlive the notification that announced the change);
- it names the download-URL epoch its tag was made in (the tag covers the epoch), the route and the
  tenant that read it: another tenant, or the batch route asked for a job's id, reads SQL as before;
- notifications are best effort and not every writer sends one (the sweeper requeueing an expired
  lease does not), so an entry is trusted for at most TRUST_SECONDS after the read that made it began:
  a change that no notification announces is hidden from a conditional poll for at most that long.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# A tag answers 304s for at most this long after the read that made it began; a notification that was
# lost (or never sent) delays a client's sight of a change by no more than this.
TRUST_SECONDS = 5.0
MAX_ENTRIES = 20_000  # ~0.6 kB each (12 MB): every item one process can poll in TRUST_SECONDS at 4,000/s


@dataclass(frozen=True)
class Scope:
    """What a remembered tag answers besides the item id: the route and the tenant that read it."""

    route: str | None
    tenant_id: uuid.UUID


@dataclass(frozen=True)
class CachedTag:
    scope: Scope
    tag: str
    epoch: int  # the download-URL epoch the tag was made in
    final: bool  # the item was finished: a wait for its change answers at once
    read_at: float  # when the read that made it began (the cache's clock)


class Read:
    """A read of one item in flight; `stale` once the item may have changed since it began."""

    __slots__ = ("item_id", "stale", "started")

    def __init__(self, item_id: str, started: float, stale: bool) -> None:
        self.item_id = item_id
        self.started = started
        self.stale = stale


class TagCache:
    def __init__(
        self,
        trust_seconds: float = TRUST_SECONDS,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trust_seconds = trust_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, CachedTag] = OrderedDict()
        self._reads: dict[str, set[Read]] = {}
        self._live = False  # the subscription is confirmed: every notification from now on arrives
        self._lock = threading.Lock()  # gunicorn threads and the listener share one cache per process

    def get(self, item_id: str, scope: Scope, epoch: int) -> CachedTag | None:
        """The tag remembered for the item, when it is still trusted for this scope and URL epoch."""
        with self._lock:
            entry = self._entries.get(item_id)
            if entry is None or not self._live:
                return None
            if entry.epoch != epoch or self.clock() - entry.read_at >= self.trust_seconds:
                del self._entries[item_id]
                return None
            return entry if entry.scope == scope else None

    @contextmanager
    def reading(self, item_id: str) -> Iterator[Read]:
        """Enter *before* reading the row: a change notified from then on makes the read stale."""
        with self._lock:
            read = Read(item_id, self.clock(), stale=not self._live)
            self._reads.setdefault(item_id, set()).add(read)
        try:
            yield read
        finally:
            with self._lock:
                reads = self._reads.get(item_id)
                if reads is not None:
                    reads.discard(read)
                    if not reads:
                        del self._reads[item_id]

    def put(self, read: Read, scope: Scope, tag: str, epoch: int, final: bool) -> None:
        """Remember the tag a read produced, unless the item may have changed while it was read."""
        with self._lock:
            if read.stale or not self._live:
                return
            self._entries[read.item_id] = CachedTag(scope, tag, epoch, final, read.started)
            self._entries.move_to_end(read.item_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def invalidate(self, item_id: str) -> None:
        """The item changed (a notification named it)."""
        with self._lock:
            self._entries.pop(item_id, None)
            for read in self._reads.get(item_id, ()):
                read.stale = True

    def subscribed(self) -> None:
        """The subscription is confirmed: notifications arrive from now on, so entries may be kept."""
        with self._lock:
            self._live = True

    def unsubscribed(self) -> None:
        """The subscription is lost (or not yet made): forget everything and keep nothing until it is back."""
        with self._lock:
            self._live = False
            self._entries.clear()
            for reads in self._reads.values():
                for read in reads:
                    read.stale = True

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
