"""Submitting jobs and batches: validate -> check the tenant's queued quota -> write -> commit -> wake
the scheduler.

Everything is validated (params and references) before anything is written, and a request over the
tenant's `max_queued_jobs` writes nothing (429). New jobs are held in SQL (`published_at` NULL): the
API sends no job message; the scheduler (worker/scheduler.py), woken after the commit, dispatches them
in their turn. Each job gets its place in its tenant's order (`order_key`) from a per-tenant sequence
taken in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import ApiError, field_error
from api.references import check_references
from api.validation import parse
from shared.logging import log_context
from shared.models import Batch, Job, JobStatus, Tenant, utcnow
from shared.queue import queue_for
from shared.scheduling import order_key
from shared.settings import Settings
from shared.specs import (
    FAMILY_OPTIONS,
    PARAMS_BY_KIND,
    BatchSubmission,
    Family,
    JobKind,
    JobSubmission,
    Spec,
)
from shared.usage import QuotaExceeded, reserve_seqs
from shared.webhooks import WebhookUrlError, check_url, parse_events

log = logging.getLogger("genq.api")
Wake = Callable[[Iterable[str]], None]  # tells the scheduler that these queues have new work
QUEUE_FULL_RETRY_AFTER_SECONDS = 30  # a full queue drains at the workers' pace: check back in a while


@dataclass(frozen=True)
class PreparedJob:
    kind: JobKind
    params: dict[str, Any]  # validated and normalised: what the worker will read back
    priority: int

    def same_as(self, job: Job) -> bool:
        return (job.kind, job.params, job.priority) == (self.kind, self.params, self.priority)


def _parse_params(kind: JobKind, raw: dict[str, Any], prefix: str) -> Spec:
    # Training options are checked first, on their own, so an error names params.options.<field>
    # (TrainParams checks them too, but pydantic drops the location of a nested model's errors).
    options, family = raw.get("options"), raw.get("family")
    if kind == JobKind.train and isinstance(options, dict) and family in FAMILY_OPTIONS:
        parse(FAMILY_OPTIONS[Family(family)], options, f"{prefix}.options")
    return parse(PARAMS_BY_KIND[kind], raw, prefix)


def _prepare(submission: JobSubmission, prefix: str, priority: int) -> tuple[PreparedJob, Spec]:
    params = _parse_params(submission.kind, submission.params, f"{prefix}params")
    return PreparedJob(submission.kind, params.model_dump(mode="json"), priority), params


def _row(
    job: PreparedJob, tenant_id: uuid.UUID, seq: int, settings: Settings, now: dt.datetime, **extra: Any
) -> dict:
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "kind": job.kind,
        "params": job.params,
        "status": JobStatus.queued,
        "queue": queue_for(job.kind, settings),
        "priority": job.priority,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        "order_key": order_key(job.priority, seq),
        "request_id": log_context().get("request_id"),
        **extra,
    }


def _webhook(
    session: Session, tenant_id: uuid.UUID, spec: JobSubmission | BatchSubmission, settings: Settings
) -> dict[str, Any]:
    """The webhook columns of a submission, checked (https, a public address, a tenant secret to sign
    with); 422 naming `webhook` otherwise. Checked before anything is written."""
    if spec.webhook is None:
        return {}
    try:
        check_url(spec.webhook, settings)
    except WebhookUrlError as exc:
        raise field_error(422, "invalid_request", "webhook", str(exc)) from None
    if session.scalar(select(Tenant.webhook_secret).where(Tenant.id == tenant_id)) is None:
        message = "the tenant has no webhook secret yet; an admin makes one: genq admin webhook-secret TENANT"
        raise field_error(422, "invalid_request", "webhook", message)
    return {"webhook_url": spec.webhook, "webhook_events": parse_events(spec.webhook_events)}


def _conflict() -> ApiError:
    message = "Idempotency-Key: already used for a different request"
    return ApiError(409, "idempotency_conflict", message, [{"field": "Idempotency-Key", "message": message}])


def _reserve(session: Session, tenant_id: uuid.UUID, count: int) -> int:
    """The first of `count` sequence numbers for the tenant's new jobs, once its queued quota allows
    them; 429 naming the quota otherwise (the caller has written nothing yet)."""
    try:
        return reserve_seqs(session, tenant_id, count, QUEUE_FULL_RETRY_AFTER_SECONDS)
    except QuotaExceeded as exc:
        session.rollback()
        message = f"{exc}: this request adds {count}; wait for queued jobs to finish, or cancel some"
        raise ApiError(
            429,
            "quota_exceeded",
            message,
            [{"field": exc.quota, "message": message}],
            headers={"Retry-After": str(exc.retry_after)},
        ) from None


# ---------------------------------------------------------------------------------------------------
# One job


def _existing_job(session: Session, tenant_id: uuid.UUID, key: str, prepared: PreparedJob) -> Job | None:
    job = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))
    if job is not None and not prepared.same_as(job):
        raise _conflict()
    return job


def submit_job(
    session: Session,
    tenant_id: uuid.UUID,
    body: dict[str, Any],
    key: str | None,
    settings: Settings,
    wake: Wake,
) -> tuple[Job, bool]:
    """The job for this request and whether it was created now (False: an idempotent replay)."""
    submission = parse(JobSubmission, body)
    prepared, params = _prepare(submission, "", submission.priority)
    if key is not None and (existing := _existing_job(session, tenant_id, key, prepared)):
        return existing, False
    check_references(session, tenant_id, [("params", prepared.kind, params)])
    webhook = _webhook(session, tenant_id, submission, settings)
    seq = _reserve(session, tenant_id, 1)
    row = _row(prepared, tenant_id, seq, settings, utcnow(), idempotency_key=key, **webhook)
    job = Job(**row)
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the insert
        session.rollback()
        existing = _existing_job(session, tenant_id, key, prepared) if key else None
        if existing is None:
            raise
        return existing, False
    log.info("job %s queued", job.id, extra={"job_id": str(job.id)})
    wake([job.queue])
    return job, True


# ---------------------------------------------------------------------------------------------------
# Batches


Prepared = tuple[list[PreparedJob], list[tuple[str, JobKind, Spec]]]  # the jobs, and what they reference
_ABSENT = object()


def _prepare_batch(submission: BatchSubmission) -> Prepared:
    if submission.template is not None:
        return _prepare_template(submission)
    assert submission.items is not None
    return _prepare_each(submission, submission.items, [f"items.{i}." for i in range(len(submission.items))])


def _prepare_each(
    submission: BatchSubmission, items: Sequence[JobSubmission], prefixes: Sequence[str]
) -> Prepared:
    prepared, refs = [], []
    for item, prefix in zip(items, prefixes, strict=True):
        if item.webhook is not None:
            raise field_error(422, "invalid_request", f"{prefix}webhook", "give webhook on the batch")
        own_priority = "priority" in item.model_fields_set
        job, params = _prepare(item, prefix, item.priority if own_priority else submission.priority)
        prepared.append(job)
        refs.append((f"{prefix}params", job.kind, params))
    return prepared, refs


def _prepare_template(submission: BatchSubmission) -> Prepared:
    """A template batch's items differ only in the seed/label each sets in params, values the batch model
    has already checked (`Seed`, `Label`) and that no params check relates to another field. So the first
    item is validated (its errors name `template.…`, as every item's would) and the others are derived
    from its normalised params with their own values set. Should the params not carry the first item's
    values unchanged (a spec that rewrites them), every item is validated instead."""
    count = submission.item_count()
    (first,), refs = _prepare_each(submission, [submission.template_item(0)], ["template."])
    values = submission.template_values(0)
    if any(first.params.get(name, _ABSENT) != value for name, value in values.items()):
        items = [submission.template_item(i) for i in range(count)]
        return _prepare_each(submission, items, ["template."] * count)
    derived = (
        PreparedJob(first.kind, {**first.params, **submission.template_values(i)}, first.priority)
        for i in range(1, count)
    )
    return [first, *derived], refs


def _existing_batch(
    session: Session, tenant_id: uuid.UUID, key: str, prepared: list[PreparedJob]
) -> tuple[Batch, list[str]] | None:
    batch = session.scalar(select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == key))
    if batch is None:
        return None
    query = select(Job.id, Job.kind, Job.params, Job.priority).where(Job.batch_id == batch.id)
    rows = session.execute(query.order_by(Job.created_at, Job.id)).all()
    same = len(rows) == len(prepared) == batch.total and all(
        (r.kind, r.params, r.priority) == (p.kind, p.params, p.priority)
        for r, p in zip(rows, prepared, strict=True)
    )
    if not same:
        raise _conflict()
    return batch, [str(r.id) for r in rows]


def submit_batch(
    session: Session,
    tenant_id: uuid.UUID,
    body: dict[str, Any],
    key: str | None,
    settings: Settings,
    wake: Wake,
) -> tuple[Batch, list[str], bool]:
    """The batch, its job ids in item order, and whether it was created now."""
    submission = parse(BatchSubmission, body)
    prepared, refs = _prepare_batch(submission)
    if key is not None and (existing := _existing_batch(session, tenant_id, key, prepared)):
        return (*existing, False)
    check_references(session, tenant_id, refs)
    webhook = _webhook(session, tenant_id, submission, settings)
    first = _reserve(session, tenant_id, len(prepared))
    now = utcnow()
    batch = Batch(
        id=uuid.uuid4(), tenant_id=tenant_id, total=len(prepared), idempotency_key=key, created_at=now,
        **webhook,
    )  # fmt: skip
    # Item i is created i microseconds after the first: listings and the queue keep the batch's order.
    rows = [
        _row(job, tenant_id, first + i, settings, now + dt.timedelta(microseconds=i), batch_id=batch.id)
        for i, job in enumerate(prepared)
    ]
    session.add(batch)
    try:
        session.flush()
        session.execute(insert(Job), rows)  # one executemany, not an ORM object per job
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = _existing_batch(session, tenant_id, key, prepared) if key else None
        if existing is None:
            raise
        return (*existing, False)
    log.info("batch %s: %d jobs queued", batch.id, len(rows), extra={"batch_id": str(batch.id)})
    wake({row["queue"] for row in rows})
    return batch, [str(row["id"]) for row in rows], True
