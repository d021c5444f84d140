"""/v1/jobs: submit, list, read, cancel."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, url_for
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from api.auth import tenant_id
from api.cancellation import cancel_job
from api.context import api, db
from api.long_poll import long_poll
from api.openapi import body, headers_of, operation, query_of
from api.pagination import page, page_query
from api.queries import get_owned, standing_of
from api.schemas import ConditionalHeaders, IdempotencyHeaders, JobList, JobQuery, JobView, WaitQuery
from api.submission import submit_job
from api.validation import parse_id
from api.views import job_summary, job_view
from shared.models import TERMINAL_STATUSES, Job, JobStatus
from shared.specs import JobKind, JobSubmission

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


def _detail(job: Job) -> dict[str, Any]:
    return job_view(job, api().urls, standing_of(db(), job))


@bp.post("")
@operation(
    {202: JobView, 200: (JobView, "idempotent replay: the existing job")},
    (400, 401, 404, 409, 415, 422),
    headers=IdempotencyHeaders,
    body=JobSubmission,
)
def create() -> tuple[Response, int, dict[str, str]]:
    """Submit a job"""
    ctx = api()
    key = headers_of(IdempotencyHeaders).idempotency_key
    job, created = submit_job(db(), tenant_id(), body(), key, ctx.settings, ctx.wake)
    location = url_for("jobs.read", job_id=job.id)
    return jsonify(_detail(job)), 202 if created else 200, {"Location": location}


@bp.get("")
@operation({200: JobList}, (400, 401), query=JobQuery)
def list_jobs() -> Response:
    """List jobs, newest first"""
    params = query_of(JobQuery)
    query = select(Job).where(Job.tenant_id == tenant_id())
    if params.status:
        query = query.where(Job.status.in_([JobStatus(s) for s in params.status]))
    if params.kind:
        query = query.where(Job.kind.in_([JobKind(k) for k in params.kind]))
    if params.batch:
        query = query.where(Job.batch_id == params.batch)
    rows = db().scalars(page_query(query, Job.created_at, Job.id, params.cursor, params.limit)).all()
    jobs, next_cursor = page(rows, params.limit)
    return jsonify({"jobs": [job_summary(j) for j in jobs], "next_cursor": next_cursor})


@bp.get("/<job_id>")
@operation(
    {200: JobView, 304: (None, "not modified: the copy named by If-None-Match is current")},
    (400, 401, 404),
    query=WaitQuery,
    headers=ConditionalHeaders,
)
def read(job_id: str) -> Response:
    """Read a job: status, progress, artifacts"""
    seconds = query_of(WaitQuery).wait
    owner = tenant_id()

    def reply() -> tuple[dict[str, Any], bool]:
        job = get_owned(db(), Job, job_id, owner, joinedload(Job.artifacts))
        return _detail(job), job.status in TERMINAL_STATUSES

    return long_poll(str(parse_id(job_id, "job", "job_id")), reply, seconds)


@bp.post("/<job_id>/cancel")
@operation({200: JobView}, (401, 404))
def cancel(job_id: str) -> Response:
    """Cancel a job (idempotent)"""
    session = db()
    job = get_owned(session, Job, job_id, tenant_id())
    cancel_job(session, job)
    session.refresh(job)
    return jsonify(_detail(job))
