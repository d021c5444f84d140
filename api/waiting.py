"""Long polls: a request waits for a job or batch to change without holding a database connection.

One pub/sub subscription per API process (a daemon thread, started on first use so it is created after
gunicorn forks) wakes every request waiting on the id named in a notification. A waiting request holds
only its thread and a `threading.Event`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import redis

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

    @contextmanager
    def watch(self, item_id: str) -> Iterator[threading.Event]:
        """An event set when `item_id` next changes. Enter it *before* reading the row, so a change
        between the read and the wait is not missed."""
        self._ensure_listening()
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

    def _ensure_listening(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._listen, name="genq-change-waiters", daemon=True)
                self._thread.start()

    def _listen(self) -> None:
        while True:
            client = redis.Redis.from_url(
                self.redis_url, socket_connect_timeout=2.0, health_check_interval=10
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(PATTERN)
                self._subscribed.set()
                for message in pubsub.listen():
                    if message and message.get("type") == "pmessage":
                        self._wake(item_id_of(message["channel"]))
            except redis.RedisError as error:
                log.warning("change notifications interrupted (%s); reconnecting", error)
            finally:
                self._subscribed.clear()
                self._wake_all()  # waiters re-read the row now, then wait with rechecks
                pubsub.close()
                client.close()
            time.sleep(RECONNECT_SECONDS)

    def _wake(self, item_id: str) -> None:
        with self._lock:
            events = list(self._waiting.get(item_id, ()))
        for event in events:
            event.set()

    def _wake_all(self) -> None:
        with self._lock:
            events = [event for group in self._waiting.values() for event in group]
        for event in events:
            event.set()
