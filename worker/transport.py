"""The workers' Redis transport: kombu's, except that a queue entry which is not a Celery message (not
JSON, not text) is logged and dropped instead of stopping the worker.

kombu decodes each entry it pops (BRPOP) before Celery sees it; a decode error there escapes the event
loop and ends the worker process ("Unrecoverable error"). The entry is already off the queue by then, so
nothing is lost by dropping it, while a worker that dies on it stops serving every good message behind
it. Anything that does decode (a malformed task, an unknown id) reaches Celery, which rejects it.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis

log = logging.getLogger(__name__)


class Channel(redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        try:
            return super()._brpop_read(**options)
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError both are
            log.error("dropped a queue entry that is not a Celery message: %s", error)
            return True  # an entry was consumed: the loop goes on to the next one


class Transport(redis.Transport):
    Channel = Channel
