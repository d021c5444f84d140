"""Cancelling a tenant's job or batch, the one way every route does it (the JSON API and the dashboard):
the fenced state change, its webhook `completed` events in the same transaction, the commit, then the
change notification that answers clients waiting with `?wait=`."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.context import api
from api.routes.webhooks import record_cancel
from shared import job_state
from shared.models import Batch, Job


def cancel_job(session: Session, job: Job) -> None:
    job_state.request_cancel(session, job.id)
    record_cancel(session, job_id=job.id)
    session.commit()
    api().notifier.changed([job.id, job.batch_id])


def cancel_batch(session: Session, batch: Batch) -> None:
    job_state.cancel_batch(session, batch.id)
    record_cancel(session, batch_id=batch.id)
    session.commit()
    api().notifier.changed([batch.id])
