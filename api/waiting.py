"""Long polls: a request waits for a job or batch to change without holding a database connection.

One pub/sub subscription per API process (a daemon thread, started on first use so it is created after
gunicorn forks) wakes every request waiting on the id named in a notification. A waiting request holds
only its thread and a `threading.Event`. The same notifications drop the process's remembered ETags
(`tags`, api/tag_cache.py), which are kept only while the subscription is confirmed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from api.tag_cache import TagCache
from shared.job_events import PATTERN, item_id_of

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0
UNSUBSCRIBED_WAIT_SECONDS = 1.0  # without a subscription a waiter rechecks the row this often


class ChangeWaiters:
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._waiting: defaultdict[str, set[threading.Event]] = defaultdict(set)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self.tags = TagCache()

    @contextmanager
    def watch(self, item_id: str) -> Iterator[threading.Event]:
        """An event set when `item_id` next changes. Enter it *before* reading the row, so a change
        between the read and the wait is not missed."""
        self.ensure_listening()
        event = threading.Event()
        with self._lock:
            self._waiting[item_id].add(event)
        try:
            yield event
        finally:
            with self._lock:
                events = self._waiting.get(item_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._waiting[item_id]

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """True when the item changed within `seconds`. Without a live subscription it returns within
        a second, so the caller re-reads the row rather than sleeping through a change."""
        if not self._subscribed.is_set():
            seconds = min(seconds, UNSUBSCRIBED_WAIT_SECONDS)
        return event.wait(seconds)

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(len(events) for events in self._waiting.values())

    def ensure_listening(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._listen, name="genq-change-waiters", daemon=True)
                self._thread.start()

    def _listen(self) -> None:
        outage_logged = False  # one warning per outage, not one a second while the broker is down
        while True:
            client = redis.Redis.from_url(
                self.redis_url, socket_connect_timeout=2.0, health_check_interval=10
            )
            pubsub = client.pubsub()
            try:
                pubsub.psubscribe(PATTERN)
                for message in pubsub.listen():
                    kind = message.get("type") if message else None
                    if kind == "pmessage":
                        self._wake(item_id_of(message["channel"]))
                    elif kind == "psubscribe":
                        # Redis has confirmed the pattern: from here on no notification is missed (the
                        # command having been sent is not enough, so the tags wait for this).
                        self._subscribed.set()
                        self.tags.subscribed()
                        outage_logged = False
            except redis.RedisError as error:
                level = logging.DEBUG if outage_logged else logging.WARNING
                log.log(level, "change notifications interrupted (%s); reconnecting", error)
                outage_logged = True
            finally:
                self._subscribed.clear()
                self.tags.unsubscribed()  # notifications until the next confirmation may be lost
                self._wake_all()  # waiters re-read the row now, then wait with rechecks
                pubsub.close()
                client.close()
            time.sleep(RECONNECT_SECONDS)

    def _wake(self, item_id: str) -> None:
        self.tags.invalidate(item_id)  # first: a woken waiter's re-read may then be remembered
        with self._lock:
            events = list(self._waiting.get(item_id, ()))
        for event in events:
            event.set()

    def _wake_all(self) -> None:
        with self._lock:
            events = [event for group in self._waiting.values() for event in group]
        for event in events:
            event.set()
