"""Reads scoped to one tenant: another tenant's rows are simply not found (404, never 403)."""

from __future__ import annotations

import uuid
from typing import TypeVar

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import ExecutableOption

from api.errors import not_found
from api.validation import parse_id
from shared.models import Batch, Dataset, Job, JobStatus, TrainedModel

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


def queue_position(session: Session, job: Job) -> int | None:
    """How many queued jobs in the same queue run before this one (higher priority, or same priority and
    older); None unless the job is queued. Served by ix_jobs_queue_order."""
    if job.status != JobStatus.queued:
        return None
    ahead = or_(
        Job.priority > job.priority,
        and_(
            Job.priority == job.priority,
            or_(Job.created_at < job.created_at, and_(Job.created_at == job.created_at, Job.id < job.id)),
        ),
    )
    query = select(func.count()).where(Job.status == JobStatus.queued, Job.queue == job.queue, ahead)
    return session.scalar(query) or 0
