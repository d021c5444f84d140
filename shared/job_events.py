"""Change notifications for jobs and batches over the broker's Redis pub/sub, so clients can wait for a
change (`GET /v1/jobs/{id}?wait=N`) instead of polling.

A notification carries only an id: receivers re-read the SQL row, which stays the truth. Notifications
are best effort: one that is lost (the broker restarting) only makes a waiter return at its timeout.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

import redis

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "genq:changed:"
PATTERN = f"{CHANNEL_PREFIX}*"


def channel(item_id: uuid.UUID | str) -> str:
    """The channel for one job or batch (ids are UUIDs, unique across both)."""
    return f"{CHANNEL_PREFIX}{item_id}"


def item_id_of(channel_name: str | bytes) -> str:
    name = channel_name.decode() if isinstance(channel_name, bytes) else channel_name
    return name.removeprefix(CHANNEL_PREFIX)


class ChangeNotifier:
    """Publishes "this job (and its batch) changed". Never raises: a notification is an optimisation."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)

    def changed(self, item_ids: Iterable[uuid.UUID | str | None]) -> None:
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for item_id in item_ids:
                    if item_id is not None:
                        pipe.publish(channel(item_id), b"")
                pipe.execute()
        except redis.RedisError as error:
            log.debug("change notification not sent: %s", error)

    def close(self) -> None:
        self.client.close()
