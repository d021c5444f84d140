"""Publishing committed jobs to the broker by task name (the API never imports the worker).

A publisher takes job messages and returns the ids it sent, in order; it stops at the first failure and
never raises, so a broker outage leaves the remaining jobs queued with `published_at` NULL for the
sweeper to publish again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from celery import Celery

from shared.queue import TASK_NAMES, celery_priority, queue_for
from shared.settings import Settings
from shared.specs import JobKind

log = logging.getLogger("genq.api")


@dataclass(frozen=True)
class JobMessage:
    job_id: str
    kind: JobKind
    priority: int


Publisher = Callable[[Sequence[JobMessage]], list[str]]


class CeleryPublisher:
    """Sends every message of a call through one producer (one broker connection from the pool).

    Same message as shared.queue.publish_job (task name, task id = job id, queue by kind, Celery
    priority), with the producer passed in so a 10,000-job batch does not acquire one per message.
    """

    def __init__(self, celery: Celery, settings: Settings) -> None:
        self.celery = celery
        self.settings = settings

    def __call__(self, messages: Sequence[JobMessage]) -> list[str]:
        sent: list[str] = []
        if not messages:
            return sent
        try:
            with self.celery.producer_or_acquire() as producer:
                for message in messages:
                    self.celery.send_task(
                        TASK_NAMES[message.kind],
                        args=[message.job_id],
                        task_id=message.job_id,
                        queue=queue_for(message.kind, self.settings),
                        priority=celery_priority(message.priority),
                        producer=producer,
                    )
                    sent.append(message.job_id)
        except Exception as exc:  # the broker is down or refused: the sweeper republishes later
            log.warning("published %d of %d jobs; broker error: %s", len(sent), len(messages), exc)
        return sent
