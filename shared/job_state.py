"""Job state changes as single compare-and-set UPDATEs: a stale or duplicate actor changes nothing.

Every transition names the state it expects in its WHERE clause (and a worker also its own attempt), so
the API, any number of workers and the sweeper can race without locks.

A worker's transitions are fenced on its `Lease` (job id, attempt number, owner): once the sweeper has
requeued a job and another worker claimed it, the first worker's late writes match no row.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, select, true, update
from sqlalchemy.orm import Session

from shared.models import DISPATCHED, HELD, Batch, Job, JobStatus, utcnow
from shared.specs import JobKind
from shared.usage import record_worker_time
from shared.webhooks import emits

ACTIVE_STATUSES = (JobStatus.running, JobStatus.canceling)


@dataclass(frozen=True)
class Lease:
    """One attempt's hold on a job: every worker write names all three."""

    job_id: uuid.UUID
    attempt: int
    owner: str


@dataclass(frozen=True)
class PublishTarget:
    """What the sweeper needs to (re)publish a job."""

    job_id: uuid.UUID
    kind: JobKind
    priority: int
    published_at: dt.datetime | None = None  # when its last message was sent (None: never)


@dataclass(frozen=True)
class RequeueReport:
    requeued: list[PublishTarget]
    exhausted: int  # failed with attempts_exhausted
    canceled: int  # canceling jobs whose worker died
    changed: list[uuid.UUID]  # every job settled, and its batch: what waiting clients hear about


def _cancel(session: Session, jobs: ColumnElement[bool], now: dt.datetime) -> None:
    """queued -> canceled at once; running -> canceling (its worker stops at the next step check)."""
    session.execute(
        update(Job)
        .where(jobs, Job.status == JobStatus.queued)
        .values(status=JobStatus.canceled, finished_at=now, updated_at=now)
    )
    session.execute(
        update(Job)
        .where(jobs, Job.status == JobStatus.running)
        .values(status=JobStatus.canceling, updated_at=now)
    )


def request_cancel(session: Session, job_id: uuid.UUID) -> JobStatus | None:
    """Cancel a job. Idempotent; returns the job's status afterwards, None if it does not exist."""
    _cancel(session, Job.id == job_id, utcnow())
    return session.scalar(Job.__table__.select().with_only_columns(Job.status).where(Job.id == job_id))


def cancel_batch(session: Session, batch_id: uuid.UUID) -> None:
    """Cancel every job of a batch the same way: one UPDATE for its queued jobs however many (held jobs
    have no message to recall), one for its running ones."""
    now = utcnow()
    session.execute(update(Batch).where(Batch.id == batch_id).values(canceled_at=now))
    _cancel(session, Job.batch_id == batch_id, now)


# ---------------------------------------------------------------------------------------------------
# Worker transitions


@emits("started")
def claim_job(session: Session, job_id: uuid.UUID, owner: str, lease_seconds: float) -> Job | None:
    """queued -> running for one new attempt. None when the job is not queued (a second delivery of a
    running or finished job, a canceled job, an unknown id): the caller then does nothing."""
    now = utcnow()
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(
            status=JobStatus.running,
            attempts=Job.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
            started_at=now,
            updated_at=now,
        )
        .returning(Job.id)
    ).first()
    if claimed is None:
        return None
    return session.get(Job, job_id, populate_existing=True)


def lease_of(job: Job) -> Lease:
    assert job.lease_owner is not None, "job has no lease"
    return Lease(job.id, job.attempts, job.lease_owner)


def _held(lease: Lease) -> ColumnElement[bool]:
    return and_(
        Job.id == lease.job_id,
        Job.attempts == lease.attempt,
        Job.lease_owner == lease.owner,
        Job.status.in_(ACTIVE_STATUSES),
    )


def renew_lease(session: Session, lease: Lease, lease_seconds: float) -> JobStatus | None:
    """Extend the lease. Returns running/canceling, or None when this attempt no longer holds the job."""
    now = utcnow()
    return session.execute(
        update(Job)
        .where(_held(lease))
        .values(lease_expires_at=now + dt.timedelta(seconds=lease_seconds))
        .returning(Job.status)
    ).scalar()


@emits("progress")
def write_progress(session: Session, lease: Lease, progress: dict[str, Any]) -> JobStatus | None:
    """Store the progress document; returns the status like `renew_lease` (the cancel flag rides along)."""
    return session.execute(
        update(Job).where(_held(lease)).values(progress=progress).returning(Job.status)
    ).scalar()


def record_checkpoint(session: Session, lease: Lease, key: str) -> bool:
    """Remember where training can resume from; False when this attempt lost the job."""
    return _changed(session, update(Job).where(_held(lease)).values(checkpoint_key=key))


@emits("completed")
def _finish(session: Session, lease: Lease, status: JobStatus, **values: Any) -> bool:
    now = utcnow()
    statement = (
        update(Job)
        .where(_held(lease))
        .values(status=status, lease_expires_at=None, finished_at=now, updated_at=now, **values)
    )
    return _ended(session, statement, now)


def _ended(session: Session, statement: Any, now: dt.datetime) -> bool:
    """Run an UPDATE that ends an attempt; when it matched, charge the attempt's worker time."""
    row = session.execute(statement.returning(Job.tenant_id, Job.started_at)).first()
    if row is None:
        return False
    if row.started_at is not None:
        record_worker_time(session, row.tenant_id, (now - row.started_at).total_seconds(), now)
    return True


def finish_succeeded(session: Session, lease: Lease, result: dict[str, Any]) -> bool:
    """running (or canceling: the work completed before the next cancel check) -> succeeded."""
    return _finish(session, lease, JobStatus.succeeded, result=result, error_code=None, error_message=None)


def finish_failed(session: Session, lease: Lease, code: str, message: str) -> bool:
    return _finish(session, lease, JobStatus.failed, error_code=code, error_message=message[:4000])


def finish_canceled(session: Session, lease: Lease) -> bool:
    return _finish(session, lease, JobStatus.canceled)


def release_for_retry(session: Session, lease: Lease, max_attempts: int) -> JobStatus | None:
    """An infrastructure fault interrupted this attempt: running -> queued again, as the sweeper does for
    an expired lease (attempts kept: the next claim counts the next one; published_at cleared: it is held
    again and the scheduler dispatches it in its turn). A job already asked to cancel goes
    canceled instead. None when this attempt no longer holds the job or has used the last attempt (the
    caller then fails it, fenced as ever)."""
    now = utcnow()
    if _ended(
        session,
        update(Job)
        .where(_held(lease), Job.status == JobStatus.canceling)
        .values(status=JobStatus.canceled, lease_expires_at=None, finished_at=now, updated_at=now),
        now,
    ):
        return JobStatus.canceled
    requeued = _ended(
        session,
        update(Job)
        .where(_held(lease), Job.status == JobStatus.running, Job.attempts < max_attempts)
        .values(
            status=JobStatus.queued,
            lease_owner=None,
            lease_expires_at=None,
            published_at=None,
            updated_at=now,
        ),
        now,
    )
    return JobStatus.queued if requeued else None


def _changed(session: Session, statement: Any) -> bool:
    return session.execute(statement.returning(Job.id)).first() is not None


# ---------------------------------------------------------------------------------------------------
# Sweeper transitions


def requeue_expired(
    session: Session,
    max_attempts: int,
    queues: Sequence[str] | None = None,
    now: dt.datetime | None = None,
) -> RequeueReport:
    """Settle jobs (of `queues`, default all) whose worker stopped renewing its lease.

    canceling -> canceled; running with attempts < max_attempts -> queued (attempts kept: the next claim
    raises it; published_at cleared: the caller publishes it again); running otherwise -> failed
    `attempts_exhausted`. Each is one UPDATE on the expected state, so concurrent sweepers split the
    work instead of doubling it."""
    now = now or utcnow()
    expired = and_(Job.lease_expires_at.is_not(None), Job.lease_expires_at < now, _in_queues(queues))
    canceled = session.execute(
        update(Job)
        .where(Job.status == JobStatus.canceling, expired)
        .values(status=JobStatus.canceled, lease_expires_at=None, finished_at=now, updated_at=now)
        .returning(Job.id, Job.batch_id)
    ).all()
    exhausted = session.execute(
        update(Job)
        .where(Job.status == JobStatus.running, expired, Job.attempts >= max_attempts)
        .values(
            status=JobStatus.failed,
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
            error_code="attempts_exhausted",
            error_message=(
                f"the worker running this job stopped renewing its lease on each of {max_attempts} "
                "attempts (crashed, killed or lost its connection); not retried again"
            ),
        )
        .returning(Job.id, Job.batch_id)
    ).all()
    requeued = session.execute(
        update(Job)
        .where(Job.status == JobStatus.running, expired, Job.attempts < max_attempts)
        .values(
            status=JobStatus.queued,
            lease_owner=None,
            lease_expires_at=None,
            published_at=None,
            updated_at=now,
        )
        .returning(Job.id, Job.kind, Job.priority, Job.batch_id)
    ).all()
    settled = [*canceled, *exhausted, *requeued]
    return RequeueReport(
        requeued=[PublishTarget(row.id, row.kind, row.priority) for row in requeued],
        exhausted=len(exhausted),
        canceled=len(canceled),
        changed=[row.id for row in settled] + list({row.batch_id for row in settled if row.batch_id}),
    )


def find_lost_queued(
    session: Session,
    republish_after_seconds: float,
    queues: Sequence[str] | None = None,
    limit: int = 1000,
    now: dt.datetime | None = None,
) -> list[PublishTarget]:
    """Dispatched jobs that may have lost their message: sent longer ago than `republish_after_seconds`
    and still not started. Oldest first. The caller checks the broker before holding them again."""
    now = now or utcnow()
    stale = now - dt.timedelta(seconds=republish_after_seconds)
    rows = session.execute(
        select(Job.id, Job.kind, Job.priority, Job.published_at)
        .where(DISPATCHED, _in_queues(queues), Job.published_at < stale)
        .order_by(Job.published_at)
        .limit(limit)
    ).all()
    return [PublishTarget(row.id, row.kind, row.priority, row.published_at) for row in rows]


def _in_queues(queues: Sequence[str] | None) -> ColumnElement[bool]:
    # A sweeper looks after the queues its deployment serves (several deployments may share a database).
    return Job.queue.in_(list(queues)) if queues is not None else true()


def mark_dispatched(
    session: Session, job_ids: list[uuid.UUID], when: dt.datetime | None = None
) -> list[uuid.UUID]:
    """Mark held jobs as sent; returns those marked (a job no longer held is left alone)."""
    if not job_ids:
        return []
    result = session.execute(
        update(Job).where(Job.id.in_(job_ids), HELD).values(published_at=when or utcnow()).returning(Job.id)
    )
    return [row.id for row in result]


def clear_published(session: Session, job_ids: list[uuid.UUID]) -> None:
    """Hold queued jobs again: their message could not be sent, or the broker lost it."""
    if job_ids:
        session.execute(
            update(Job).where(Job.id.in_(job_ids), Job.status == JobStatus.queued).values(published_at=None)
        )
