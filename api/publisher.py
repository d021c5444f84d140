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
from kombu import Producer

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


PIPELINE_SIZE = 1000  # messages per Redis round trip


class CeleryPublisher:
    """Sends every message of a call through one producer (one broker connection from the pool), in
    pipelined chunks (kombu's publish batches: one Redis round trip per chunk, not per message).

    Same message as shared.queue.publish_job (task name, task id = job id, queue by kind, Celery
    priority), with the producer passed in so a 10,000-job batch does not acquire one per message.
    A chunk counts as sent once its pipeline has been flushed.
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
                declared: set[str] = set()
                for start in range(0, len(messages), PIPELINE_SIZE):
                    chunk = messages[start : start + PIPELINE_SIZE]
                    with producer.batch(max_size=len(chunk)):
                        for message in chunk:
                            self._send(message, producer, declared)
                    sent.extend(message.job_id for message in chunk)
        except Exception as exc:  # the broker is down or refused: the sweeper republishes later
            log.warning("published %d of %d jobs; broker error: %s", len(sent), len(messages), exc)
        return sent

    def _send(self, message: JobMessage, producer: Producer, declared: set[str]) -> None:
        queue = queue_for(message.kind, self.settings)
        # Declaring a queue once per call is enough, and the repr of the args is known: skipping both
        # halves the cost of a publish in a 10,000-job batch.
        options = {"declare": []} if queue in declared else {}
        declared.add(queue)
        self.celery.send_task(
            TASK_NAMES[message.kind],
            args=[message.job_id],
            task_id=message.job_id,
            queue=queue,
            priority=celery_priority(message.priority),
            producer=producer,
            argsrepr=repr([message.job_id]),
            kwargsrepr="{}",
            **options,
        )
