"""Reads scoped to one tenant: another tenant's rows are simply not found (404, never 403)."""

from __future__ import annotations

import uuid
from typing import TypeVar

from sqlalchemy import Select, and_, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import ExecutableOption

from api.context import api
from api.errors import not_found
from api.validation import parse_id
from shared.db import capped_count
from shared.models import DISPATCHED, HELD, Batch, Dataset, Job, JobStatus, TrainedModel
from shared.scheduling import QueueSummary, Standing, band_start, read_summary, standing

Row = TypeVar("Row", Job, Batch, TrainedModel, Dataset)
NAMES: dict[type, tuple[str, str]] = {
    Job: ("job", "job_id"),
    Batch: ("batch", "batch_id"),
    TrainedModel: ("model", "model_id"),
    Dataset: ("dataset", "dataset_id"),
}


def get_owned(
    session: Session, table: type[Row], raw_id: str, tenant_id: uuid.UUID, *options: ExecutableOption
) -> Row:
    """The tenant's row with this id (from the URL), or a 404 naming the id. `options` load related rows
    in the same statement (e.g. a job's artifacts)."""
    what, field = NAMES[table]
    row_id = parse_id(raw_id, what, field)
    query = select(table).where(table.id == row_id, table.tenant_id == tenant_id).options(*options)
    row = session.scalars(query).unique().one_or_none()
    if row is None:
        raise not_found(what, row_id, field)
    return row


POSITION_COUNT_CAP = 1000  # counted exactly up to here; estimated from sequence numbers beyond


def _count(session: Session, query: Select) -> int:
    return capped_count(session, query, POSITION_COUNT_CAP)


def _own_ahead(session: Session, job: Job) -> int:
    """The tenant's own held jobs in this queue ordered before `job` (ix_jobs_held range reads).

    Within one priority a tenant's jobs are dispatched in sequence order, so the span of sequence numbers
    from its first held job of that priority to this one bounds the count from above; it over-counts by
    the jobs of that span that were canceled or went to the other queue. Spans under
    POSITION_COUNT_CAP are counted exactly instead; the tenant's held jobs of higher priorities are
    counted up to the cap."""
    lane = and_(HELD, Job.queue == job.queue, Job.tenant_id == job.tenant_id)
    key = job.order_key or 0
    band = band_start(job.priority)
    first = session.scalar(select(func.min(Job.order_key)).where(lane, Job.order_key >= band)) or key
    same_priority = key - first
    if same_priority < POSITION_COUNT_CAP:
        same_priority = _count(
            session, select(Job.id).where(lane, Job.order_key >= band, Job.order_key < key)
        )
    return same_priority + _count(session, select(Job.id).where(lane, Job.order_key < band))


def job_standing(session: Session, job: Job, summary: QueueSummary | None) -> Standing | None:
    """Where a queued job stands (position, ETA, what it waits for); None unless the job is queued."""
    if job.status != JobStatus.queued:
        return None
    if job.published_at is not None:  # its message is out: behind the messages sent before it
        sent_before = select(Job.id).where(
            DISPATCHED, Job.queue == job.queue, Job.published_at < job.published_at
        )
        return standing(summary, job.tenant_id, str(job.kind), 0, _count(session, sent_before))
    return standing(summary, job.tenant_id, str(job.kind), _own_ahead(session, job), None)


def standing_of(session: Session, job: Job) -> Standing | None:
    """`job_standing` with the scheduler's latest summary of the job's queue (one Redis read)."""
    if job.status != JobStatus.queued:
        return None
    return job_standing(session, job, read_summary(api().notifier.client, job.queue))
