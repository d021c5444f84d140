"""The dashboard's pages: the tenant's jobs and batches, one job, the model registry.

Server-rendered HTML built from the JSON API's own views (api/views.py) and tenant-scoped queries
(api/queries.py, api/pagination.py), so a page shows exactly what the tenant's key would read from /v1.
The live parts of a page are HTML fragments that static/dashboard.js fetches again every second.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as WerkzeugResponse

from api import cancellation
from api.auth import tenant_id
from api.context import api, db
from api.dashboard import signin as auth
from api.dashboard.formatting import FILTERS
from api.errors import ApiError
from api.pagination import page, page_query
from api.queries import get_owned, standing_of
from api.validation import query_uuid
from api.views import batch_view, job_summary, job_view, model_view
from shared.models import TERMINAL_STATUSES, Batch, Job, JobStatus, TrainedModel
from shared.webhooks import batch_counts

bp = Blueprint(
    "dashboard", __name__, template_folder="templates", static_folder="static",
    static_url_path="/dashboard-static",
)  # fmt: skip
JOBS_PER_PAGE = 50
BATCHES_SHOWN = 10
MODELS_PER_PAGE = 50
ACTIVE = [status.value for status in JobStatus if status not in TERMINAL_STATUSES]
# Images come from the object store (another origin with S3); scripts only from this site.
CSP = (
    "default-src 'self'; img-src 'self' http: https: data:; script-src 'self'; style-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    auth.configure_sessions(state.app, state.app.extensions["genq"].settings)
    state.app.jinja_env.filters.update(FILTERS)


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.errorhandler(ApiError)
def _error_page(error: ApiError) -> tuple[str, int]:
    return render_template("dashboard/error.html", error=error), error.status


def _page(template: str, **context: Any) -> str:
    return render_template(f"dashboard/{template}", csrf_token=auth.csrf_token(), **context)


def _refuse_forged() -> None:
    if not auth.csrf_valid():
        raise ApiError(400, "csrf_failed", "the form was not sent from this dashboard; reload and try again")


# ---------------------------------------------------------------------------------------------------
# Sign-in


@bp.get("/")
def index() -> WerkzeugResponse:
    target = "dashboard.jobs" if auth.signed_in_tenant() else "dashboard.signin"
    return auth.redirect_to(url_for(target))


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> str | tuple[str, int] | WerkzeugResponse:
    target = auth.safe_next(request.args.get("next"))
    if request.method == "GET":
        return _page("signin.html", next=target)
    _refuse_forged()
    if not auth.sign_in(request.form.get("api_key", "")):
        return _page("signin.html", next=target, failed=True), 401
    return auth.redirect_to(target)


@bp.post("/signout")
def signout() -> WerkzeugResponse:
    _refuse_forged()
    auth.sign_out()
    return auth.redirect_to(url_for("dashboard.signin"))


# ---------------------------------------------------------------------------------------------------
# Jobs and batches


def _position(session: Session, job: Job) -> int | None:
    standing = standing_of(session, job)
    return standing.position if standing else None


def _jobs_context() -> dict[str, Any]:
    session, tenant = db(), tenant_id()
    batch_id = query_uuid("batch")  # one batch's jobs, as GET /v1/jobs?batch= lists them
    jobs_query = select(Job).where(Job.tenant_id == tenant)
    if batch_id is not None:
        jobs_query = jobs_query.where(Job.batch_id == batch_id)
    query = page_query(jobs_query, Job.created_at, Job.id, request.args.get("cursor"), JOBS_PER_PAGE)
    jobs, next_cursor = page(session.scalars(query).all(), JOBS_PER_PAGE)
    batches = session.scalars(
        select(Batch).where(Batch.tenant_id == tenant).order_by(Batch.created_at.desc()).limit(BATCHES_SHOWN)
    ).all()
    return {
        "jobs": [{**job_summary(job), "queue_position": _position(session, job)} for job in jobs],
        "batches": [batch_view(batch, batch_counts(session, batch.id)) for batch in batches],
        "next_cursor": next_cursor,
        "cursor": request.args.get("cursor"),
        "batch_id": str(batch_id) if batch_id else None,
    }


@bp.get("/jobs")
@auth.signin_required
def jobs() -> str:
    return _page("jobs.html", **_jobs_context())


@bp.get("/jobs/live")
@auth.signin_required
def jobs_live() -> str:
    return _page("_jobs_live.html", **_jobs_context())


def _job_context(job_id: str) -> dict[str, Any]:
    session = db()
    job = get_owned(session, Job, job_id, tenant_id())
    view = job_view(job, api().urls, standing_of(session, job))
    images = [a for a in view["artifacts"] if a["content_type"].startswith("image/")]
    return {"job": view, "images": images, "active": view["status"] in ACTIVE}


@bp.get("/jobs/<job_id>")
@auth.signin_required
def job(job_id: str) -> str:
    return _page("job.html", **_job_context(job_id))


@bp.get("/jobs/<job_id>/live")
@auth.signin_required
def job_live(job_id: str) -> str:
    return _page("_job_live.html", **_job_context(job_id))


@bp.post("/jobs/<job_id>/cancel")
@auth.signin_required
def cancel_job(job_id: str) -> WerkzeugResponse:
    _refuse_forged()
    session = db()
    job = get_owned(session, Job, job_id, tenant_id())
    cancellation.cancel_job(session, job)
    return auth.redirect_to(url_for("dashboard.job", job_id=job.id))


@bp.post("/batches/<batch_id>/cancel")
@auth.signin_required
def cancel_batch_page(batch_id: str) -> WerkzeugResponse:
    _refuse_forged()
    session = db()
    batch = get_owned(session, Batch, batch_id, tenant_id())
    cancellation.cancel_batch(session, batch)
    return auth.redirect_to(url_for("dashboard.jobs"))


# ---------------------------------------------------------------------------------------------------
# Models


@bp.get("/models")
@auth.signin_required
def models() -> str:
    query = select(TrainedModel).where(TrainedModel.tenant_id == tenant_id())
    cursor = request.args.get("cursor")
    rows = db().scalars(page_query(query, TrainedModel.created_at, TrainedModel.id, cursor, MODELS_PER_PAGE))
    found, next_cursor = page(rows.all(), MODELS_PER_PAGE)
    urls = api().urls
    return _page(
        "models.html", models=[model_view(m, urls) for m in found], next_cursor=next_cursor, cursor=cursor
    )
