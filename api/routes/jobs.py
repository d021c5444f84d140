"""/v1/jobs: submit, list, read, cancel."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from api.auth import tenant_id
from api.cancellation import cancel_job
from api.context import api, db
from api.long_poll import long_poll, wait_seconds
from api.pagination import page, page_limit, page_query
from api.queries import get_owned, standing_of
from api.submission import submit_job
from api.validation import idempotency_key, json_body, parse_id, query_choice, query_uuid
from api.views import job_summary, job_view
from shared.models import TERMINAL_STATUSES, Job, JobStatus
from shared.specs import JobKind

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


def _detail(job: Job) -> dict[str, Any]:
    return job_view(job, api().urls, standing_of(db(), job))


@bp.post("")
def create() -> tuple[Response, int, dict[str, str]]:
    ctx = api()
    job, created = submit_job(db(), tenant_id(), json_body(), idempotency_key(), ctx.settings, ctx.wake)
    location = url_for("jobs.read", job_id=job.id)
    return jsonify(_detail(job)), 202 if created else 200, {"Location": location}


@bp.get("")
def list_jobs() -> Response:
    statuses = query_choice("status", [s.value for s in JobStatus], multiple=True)
    kinds = query_choice("kind", [k.value for k in JobKind], multiple=True)
    batch_id = query_uuid("batch")
    limit = page_limit()
    query = select(Job).where(Job.tenant_id == tenant_id())
    if statuses:
        query = query.where(Job.status.in_([JobStatus(s) for s in statuses]))
    if kinds:
        query = query.where(Job.kind.in_([JobKind(k) for k in kinds]))
    if batch_id:
        query = query.where(Job.batch_id == batch_id)
    rows = db().scalars(page_query(query, Job.created_at, Job.id, request.args.get("cursor"), limit)).all()
    jobs, next_cursor = page(rows, limit)
    return jsonify({"jobs": [job_summary(j) for j in jobs], "next_cursor": next_cursor})


@bp.get("/<job_id>")
def read(job_id: str) -> Response:
    seconds = wait_seconds()
    owner = tenant_id()

    def reply() -> tuple[dict[str, Any], bool]:
        job = get_owned(db(), Job, job_id, owner, joinedload(Job.artifacts))
        return _detail(job), job.status in TERMINAL_STATUSES

    return long_poll(str(parse_id(job_id, "job", "job_id")), reply, seconds)


@bp.post("/<job_id>/cancel")
def cancel(job_id: str) -> Response:
    session = db()
    job = get_owned(session, Job, job_id, tenant_id())
    cancel_job(session, job)
    session.refresh(job)
    return jsonify(_detail(job))
