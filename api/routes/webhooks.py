"""/v1/webhooks: the tenant's delivery log (every attempt: status code, latency, error) and resending.

Cancels here in the API record their `completed` events too (`record_cancel`): a queued job is canceled
without a worker ever seeing it.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.auth import tenant_id
from api.context import api, db
from api.errors import not_found
from api.openapi import operation, query_of
from api.pagination import page, page_query
from api.schemas import DeliveryQuery, WebhookDeliveryList, WebhookDeliveryView
from api.validation import parse_id
from api.views import iso
from shared.models import WebhookAttempt, WebhookDelivery, utcnow
from shared.webhooks import DeliveryPublisher, record_batch_event, record_job_event, use_publisher

bp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks")


def delivery_publisher() -> DeliveryPublisher:
    """One per app, on the app's broker."""
    publisher = current_app.extensions.get("genq.webhooks")
    if publisher is None:
        ctx = api()
        publisher = current_app.extensions["genq.webhooks"] = DeliveryPublisher(ctx.celery, ctx.settings)
    return publisher


def record_cancel(
    session: Session, job_id: uuid.UUID | None = None, batch_id: uuid.UUID | None = None
) -> None:
    """After a cancel, before its commit: the `completed` events of whatever it finished."""
    use_publisher(session, delivery_publisher())
    if job_id is not None:
        record_job_event(session, job_id, "completed")
    if batch_id is not None:
        record_batch_event(session, batch_id, "completed")


def delivery_view(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> dict[str, Any]:
    return {
        "id": str(delivery.id),
        "event": delivery.event,
        "job_id": str(delivery.job_id) if delivery.job_id else None,
        "batch_id": str(delivery.batch_id) if delivery.batch_id else None,
        "url": delivery.url,
        "status": delivery.status,
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "created_at": iso(delivery.created_at),
        "delivered_at": iso(delivery.delivered_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "attempts": [
            {
                "number": a.number,
                "started_at": iso(a.started_at),
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "error": a.error,
            }
            for a in attempts
        ],
    }


def _views(session: Session, deliveries: list[WebhookDelivery]) -> list[dict[str, Any]]:
    by_delivery: dict[uuid.UUID, list[WebhookAttempt]] = defaultdict(list)
    if deliveries:
        query = select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_([d.id for d in deliveries]))
        for attempt in session.scalars(query.order_by(WebhookAttempt.number, WebhookAttempt.started_at)):
            by_delivery[attempt.delivery_id].append(attempt)
    return [delivery_view(d, by_delivery[d.id]) for d in deliveries]


@bp.get("/deliveries")
@operation({200: WebhookDeliveryList}, (400, 401), query=DeliveryQuery)
def list_deliveries() -> Response:
    """Webhook deliveries and their attempts, newest first"""
    params = query_of(DeliveryQuery)
    query = select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id())
    if params.status:
        query = query.where(WebhookDelivery.status.in_(params.status))
    if params.job:
        query = query.where(WebhookDelivery.job_id == params.job)
    if params.batch:
        query = query.where(WebhookDelivery.batch_id == params.batch)
    session = db()
    paged = page_query(query, WebhookDelivery.created_at, WebhookDelivery.id, params.cursor, params.limit)
    deliveries, next_cursor = page(session.scalars(paged).all(), params.limit)
    return jsonify({"deliveries": _views(session, list(deliveries)), "next_cursor": next_cursor})


@bp.post("/deliveries/<delivery_id>/resend")
@operation({202: WebhookDeliveryView}, (401, 404))
def resend(delivery_id: str) -> tuple[Response, int]:
    """Send a delivery again (same id)

    The same event (same webhook-id and body, newly signed), with a fresh retry window."""
    session = db()
    row_id = parse_id(delivery_id, "delivery", "delivery_id")
    owned = (WebhookDelivery.id == row_id, WebhookDelivery.tenant_id == tenant_id())
    if session.scalar(select(WebhookDelivery.id).where(*owned)) is None:
        raise not_found("delivery", row_id, "delivery_id")
    now = utcnow()
    session.execute(
        update(WebhookDelivery)
        .where(*owned)
        .values(status="pending", next_attempt_at=now, retry_from=now, published_at=now)
    )
    session.commit()
    delivery_publisher()([row_id])
    delivery = session.scalar(select(WebhookDelivery).where(*owned).execution_options(populate_existing=True))
    assert delivery is not None
    return jsonify(_views(session, [delivery])[0]), 202
