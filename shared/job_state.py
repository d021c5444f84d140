"""Job state changes as single compare-and-set UPDATEs: a stale or duplicate actor changes nothing.

Every transition names the state it expects in its WHERE clause (and a worker also its own attempt), so
the API, any number of workers and the sweeper can race without locks.
"""

from __future__ import annotations

import uuid

from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.models import Batch, Job, JobStatus, utcnow


def request_cancel(session: Session, job_id: uuid.UUID) -> JobStatus | None:
    """Cancel a job: a queued one at once, a running one goes `canceling` (its worker stops at the next
    step check). Idempotent; returns the job's status afterwards, None if it does not exist."""
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(status=JobStatus.canceled, finished_at=now, updated_at=now)
    )
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running)
        .values(status=JobStatus.canceling, updated_at=now)
    )
    return session.scalar(Job.__table__.select().with_only_columns(Job.status).where(Job.id == job_id))


def cancel_batch(session: Session, batch_id: uuid.UUID) -> None:
    """Cancel every job of a batch the same way, in two statements however large the batch."""
    now = utcnow()
    session.execute(update(Batch).where(Batch.id == batch_id).values(canceled_at=now))
    session.execute(
        update(Job)
        .where(Job.batch_id == batch_id, Job.status == JobStatus.queued)
        .values(status=JobStatus.canceled, finished_at=now, updated_at=now)
    )
    session.execute(
        update(Job)
        .where(Job.batch_id == batch_id, Job.status == JobStatus.running)
        .values(status=JobStatus.canceling, updated_at=now)
    )
