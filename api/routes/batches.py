"""/v1/batches: bulk submission (up to 10,000 jobs), progress counts, cancel."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, url_for

from api.auth import tenant_id
from api.cancellation import cancel_batch
from api.context import api, db
from api.long_poll import long_poll, wait_seconds
from api.queries import get_owned
from api.submission import submit_batch
from api.validation import idempotency_key, json_body, parse_id
from api.views import batch_view
from shared.models import Batch
from shared.webhooks import batch_counts

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")


def _view(batch: Batch) -> dict[str, Any]:
    return batch_view(batch, batch_counts(db(), batch.id))


@bp.post("")
def create() -> tuple[Response, int, dict[str, str]]:
    ctx = api()
    batch, job_ids, created = submit_batch(
        db(), tenant_id(), json_body(), idempotency_key(), ctx.settings, ctx.wake
    )
    location = url_for("batches.read", batch_id=batch.id)
    return jsonify({**_view(batch), "job_ids": job_ids}), 202 if created else 200, {"Location": location}


@bp.get("/<batch_id>")
def read(batch_id: str) -> Response:
    seconds = wait_seconds()
    owner = tenant_id()

    def reply() -> tuple[dict[str, Any], bool]:
        view = _view(get_owned(db(), Batch, batch_id, owner))
        return view, bool(view["done"])

    return long_poll(str(parse_id(batch_id, "batch", "batch_id")), reply, seconds)


@bp.post("/<batch_id>/cancel")
def cancel(batch_id: str) -> Response:
    session = db()
    batch = get_owned(session, Batch, batch_id, tenant_id())
    cancel_batch(session, batch)
    session.refresh(batch)
    return jsonify(_view(batch))
