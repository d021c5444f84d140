"""The one path by which a job message reaches the broker: `dispatch` marks held jobs published, commits,
sends, and clears the mark of any it could not send (they are held again for the next pass).

Only the scheduler calls it. Marking before sending means a fast worker can never claim a job whose row
still says held; the mark is a compare-and-set on `published_at IS NULL`, so two schedulers that
overlap for a moment (a lease lost mid-pass) cannot both send the same job. A scheduler that dies
between its commit and its send leaves marked jobs without messages: the sweeper finds them absent
from the broker after `publish_grace_seconds` and clears their mark.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from celery import Celery
from kombu import Producer
from sqlalchemy.orm import Session

from shared import job_state
from shared.queue import REQUEST_ID_HEADER, TASK_NAMES, celery_priority, queue_for
from shared.settings import Settings
from shared.specs import JobKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobMessage:
    job_id: str
    kind: JobKind
    priority: int
    request_id: str | None = None  # the submitting request's id, for the worker's log lines


Publisher = Callable[[Sequence[JobMessage]], list[str]]


PIPELINE_SIZE = 1000  # messages per Redis round trip


class CeleryPublisher:
    """Sends every message of a call through one producer (one broker connection from the pool), in
    pipelined chunks (kombu's publish batches: one Redis round trip per chunk, not per message).

    The message: task name by kind, task id = job id, the job's queue, its Celery priority. A chunk
    counts as sent once its pipeline has been flushed.
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
        except Exception as exc:  # the broker is down or refused: the rest stay held for the next pass
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
            headers={REQUEST_ID_HEADER: message.request_id} if message.request_id else None,
            **options,
        )


def dispatch(session: Session, publisher: Publisher, messages: Sequence[JobMessage]) -> list[str]:
    """Mark the held jobs published and commit `session` (with whatever else it holds), then send; jobs
    whose message did not go out are held again. Returns the ids sent. Jobs no longer held (canceled, or
    marked by another pass) are skipped."""
    marked = set(job_state.mark_dispatched(session, [uuid.UUID(m.job_id) for m in messages]))
    session.commit()
    sendable = [m for m in messages if uuid.UUID(m.job_id) in marked]
    sent = publisher(sendable)
    if len(sent) < len(sendable):
        job_state.clear_published(session, [uuid.UUID(m.job_id) for m in sendable[len(sent) :]])
        session.commit()
    return sent
