"""/v1/batches: bulk submission (up to 10,000 jobs), progress counts, cancel."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, url_for

from api.auth import tenant_id
from api.cancellation import cancel_batch
from api.context import api, db
from api.long_poll import long_poll
from api.openapi import body, headers_of, operation, query_of
from api.queries import get_owned
from api.schemas import BatchCreated, BatchView, ConditionalHeaders, IdempotencyHeaders, WaitQuery
from api.submission import submit_batch
from api.validation import parse_id
from api.views import batch_view
from shared.models import Batch
from shared.specs import BatchSubmission
from shared.webhooks import batch_counts

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")


def _view(batch: Batch) -> dict[str, Any]:
    return batch_view(batch, batch_counts(db(), batch.id))


@bp.post("")
@operation(
    {202: BatchCreated, 200: (BatchCreated, "idempotent replay: the existing batch")},
    (400, 401, 404, 409, 415, 422),
    headers=IdempotencyHeaders,
    body=BatchSubmission,
)
def create() -> tuple[Response, int, dict[str, str]]:
    """Submit up to 10,000 jobs"""
    ctx = api()
    key = headers_of(IdempotencyHeaders).idempotency_key
    batch, job_ids, created = submit_batch(db(), tenant_id(), body(), key, ctx.settings, ctx.wake)
    location = url_for("batches.read", batch_id=batch.id)
    return jsonify({**_view(batch), "job_ids": job_ids}), 202 if created else 200, {"Location": location}


@bp.get("/<batch_id>")
@operation(
    {200: BatchView, 304: (None, "not modified: the copy named by If-None-Match is current")},
    (400, 401, 404),
    query=WaitQuery,
    headers=ConditionalHeaders,
)
def read(batch_id: str) -> Response:
    """Read a batch: jobs per status"""
    seconds = query_of(WaitQuery).wait
    owner = tenant_id()

    def reply() -> tuple[dict[str, Any], bool]:
        view = _view(get_owned(db(), Batch, batch_id, owner))
        return view, bool(view["done"])

    return long_poll(str(parse_id(batch_id, "batch", "batch_id")), reply, seconds)


@bp.post("/<batch_id>/cancel")
@operation({200: BatchView}, (401, 404))
def cancel(batch_id: str) -> Response:
    """Cancel a batch"""
    session = db()
    batch = get_owned(session, Batch, batch_id, tenant_id())
    cancel_batch(session, batch)
    session.refresh(batch)
    return jsonify(_view(batch))
