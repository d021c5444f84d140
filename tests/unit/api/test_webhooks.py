"""Webhooks in the API: targets checked at submission (422 naming the field, nothing written), the columns
written, cancels recording their completed events, the delivery log and resend, and their documentation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import schemas
from api.app import create_app
from api.routes.webhooks import delivery_view
from shared.models import Batch, Job, Tenant, WebhookAttempt, WebhookDelivery, utcnow
from shared.settings import Settings
from shared.webhooks import new_secret
from tests.unit.api.conftest import RecordingWake, count_rows, make_tenant
from tests.unit.api.conftest import Tenant as ApiTenant

TRAIN = {"kind": "train", "params": {"family": "cnn"}}


@pytest.fixture()
def lenient(settings: Settings) -> Settings:
    """Embedded-mode targets: http and local addresses allowed."""
    return settings.model_copy(update={"webhook_allow_http": True, "webhook_allow_private": True})


@pytest.fixture()
def lenient_client(lenient: Settings, session: Session, wakes: RecordingWake) -> Iterator[FlaskClient]:
    app = create_app(lenient, wake=wakes)
    yield app.test_client()
    app.extensions["genq"].celery.close()


@pytest.fixture()
def signed(session: Session, tenant: ApiTenant) -> ApiTenant:
    session.get(Tenant, tenant.id).webhook_secret = new_secret()  # type: ignore[union-attr]
    session.commit()
    return tenant


def error_of(response) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    body = response.json["error"]
    return response.status_code, body["details"][0]["field"], body["message"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://127.0.0.1/hook", "loopback address): refused"),
        ("https://10.0.0.8/hook", "private address): refused"),
        ("https://169.254.169.254/latest/meta-data", "link-local address): refused"),
        ("https://[::1]:8443/hook", "loopback address): refused"),
        ("https://localhost/hook", "refused"),
        ("http://203.0.113.9/hook", "must use https"),
        ("not a url", "https://"),
        ("https://user:secret@203.0.113.9/hook", "credentials"),
    ],
)
def test_a_bad_or_internal_target_is_422_and_writes_nothing(
    client: FlaskClient,
    signed: ApiTenant,
    session: Session,
    wakes: RecordingWake,
    url: str,
    message: str,
) -> None:
    before = count_rows(session)
    for path, body in (
        ("/v1/jobs", {**TRAIN, "webhook": url}),
        ("/v1/batches", {"items": [TRAIN], "webhook": url}),
    ):
        status, field, text = error_of(client.post(path, json=body, headers=signed.headers))
        assert (status, field) == (422, "webhook") and message in text and text.startswith("webhook: ")
    assert count_rows(session) == before and wakes.calls == []


def test_other_webhook_mistakes_name_their_field(
    client: FlaskClient, signed: ApiTenant, session: Session
) -> None:
    before = count_rows(session)
    cases = [
        ("/v1/jobs", {**TRAIN, "webhook_events": ["completed"]}, "webhook_events"),
        (
            "/v1/jobs",
            {**TRAIN, "webhook": "https://203.0.113.9/h", "webhook_events": ["done"]},
            "webhook_events.0",
        ),
        ("/v1/batches", {"items": [{**TRAIN, "webhook": "https://203.0.113.9/h"}]}, "items.0.webhook"),
        ("/v1/jobs", {**TRAIN, "webhook": "https://203.0.113.9/" + "x" * 2100}, "webhook"),
    ]
    for path, body, field in cases:
        status, got, _ = error_of(client.post(path, json=body, headers=signed.headers))
        assert (status, got) == (422, field), body
    assert count_rows(session) == before


def test_a_tenant_without_a_secret_is_told_how_to_make_one(
    lenient_client: FlaskClient, tenant: ApiTenant, session: Session
) -> None:
    status, field, text = error_of(
        lenient_client.post(
            "/v1/jobs", json={**TRAIN, "webhook": "http://127.0.0.1:9/h"}, headers=tenant.headers
        )
    )
    assert (status, field) == (422, "webhook") and "genq admin webhook-secret" in text
    assert count_rows(session) == (0, 0)


def test_a_webhook_is_stored_with_its_events(
    lenient_client: FlaskClient, signed: ApiTenant, session: Session
) -> None:
    job = lenient_client.post(
        "/v1/jobs", json={**TRAIN, "webhook": "http://127.0.0.1:9/h"}, headers=signed.headers
    )
    batch = lenient_client.post(
        "/v1/batches",
        json={
            "items": [TRAIN, TRAIN],
            "webhook": "http://127.0.0.1:9/b",
            "webhook_events": ["completed", "progress"],
        },
        headers=signed.headers,
    )
    assert (job.status_code, batch.status_code) == (202, 202)
    stored = session.get(Job, uuid.UUID(job.json["id"]))
    assert (stored.webhook_url, stored.webhook_events) == ("http://127.0.0.1:9/h", "started,completed")  # type: ignore[union-attr]
    stored_batch = session.get(Batch, uuid.UUID(batch.json["id"]))
    assert (stored_batch.webhook_url, stored_batch.webhook_events) == (
        "http://127.0.0.1:9/b",
        "progress,completed",
    )  # type: ignore[union-attr]
    items = session.scalars(select(Job).where(Job.batch_id == stored_batch.id)).all()  # type: ignore[union-attr]
    assert [i.webhook_url for i in items] == [None, None]


def deliveries(session: Session) -> list[WebhookDelivery]:
    session.expire_all()
    return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at)))


def test_canceling_records_completed_events_listed_and_resendable(
    lenient_client: FlaskClient, signed: ApiTenant, other: ApiTenant, session: Session
) -> None:
    headers = signed.headers
    job = lenient_client.post(
        "/v1/jobs", json={**TRAIN, "webhook": "http://127.0.0.1:9/h"}, headers=headers
    ).json
    batch = lenient_client.post(
        "/v1/batches", json={"items": [TRAIN, TRAIN], "webhook": "http://127.0.0.1:9/b"}, headers=headers
    ).json
    assert lenient_client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 200
    assert lenient_client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 200  # again
    assert lenient_client.post(f"/v1/batches/{batch['id']}/cancel", headers=headers).status_code == 200
    found = deliveries(session)
    assert [(d.event, d.job_id or d.batch_id) for d in found] == [
        ("job.completed", uuid.UUID(job["id"])),
        ("batch.completed", uuid.UUID(batch["id"])),
    ]
    listing = lenient_client.get("/v1/webhooks/deliveries", headers=headers).json
    assert [d["event"] for d in listing["deliveries"]] == ["batch.completed", "job.completed"]
    assert listing["deliveries"][1]["job_id"] == job["id"] and listing["deliveries"][1]["status"] == "pending"
    only_job = lenient_client.get(f"/v1/webhooks/deliveries?job={job['id']}", headers=headers).json
    assert [d["id"] for d in only_job["deliveries"]] == [str(found[0].id)]
    assert lenient_client.get("/v1/webhooks/deliveries", headers=other.headers).json["deliveries"] == []
    assert lenient_client.get("/v1/webhooks/deliveries?status=nope", headers=headers).status_code == 400

    found[0].status, found[0].next_attempt_at = "failed", None
    session.add(
        WebhookAttempt(
            id=uuid.uuid4(),
            delivery_id=found[0].id,
            number=1,
            status_code=500,
            latency_ms=3.5,
            error="HTTP 500",
        )
    )
    session.commit()
    resent = lenient_client.post(f"/v1/webhooks/deliveries/{found[0].id}/resend", headers=headers)
    assert resent.status_code == 202
    assert resent.json["status"] == "pending" and resent.json["id"] == str(found[0].id)
    assert [(a["number"], a["status_code"], a["error"]) for a in resent.json["attempts"]] == [
        (1, 500, "HTTP 500")
    ]
    assert (
        lenient_client.post(
            f"/v1/webhooks/deliveries/{found[0].id}/resend", headers=other.headers
        ).status_code
        == 404
    )
    assert lenient_client.post("/v1/webhooks/deliveries/nope/resend", headers=headers).status_code == 404


def test_delivery_views_match_the_documented_schema(app: Flask, session: Session) -> None:
    tenant = make_tenant(session, "carol")
    now = utcnow()
    delivery = WebhookDelivery(
        id=uuid.uuid4(), tenant_id=tenant.id, subject_id=uuid.uuid4(), event="job.started", url="https://x",
        body="{}", status="pending", attempts=0, next_attempt_at=now, retry_from=now, created_at=now,
    )  # fmt: skip
    attempt = WebhookAttempt(number=1, started_at=now, status_code=None, latency_ms=1.0, error="timeout")
    view = delivery_view(delivery, [attempt])
    assert set(view) == set(schemas.WebhookDeliveryView.model_fields)
    assert set(view["attempts"][0]) == set(schemas.WebhookAttemptView.model_fields)
    spec = app.test_client().get("/v1/openapi.json").json
    assert {"/v1/webhooks/deliveries", "/v1/webhooks/deliveries/{delivery_id}/resend"} <= set(spec["paths"])
    submission = spec["components"]["schemas"]["JobSubmission"]["properties"]
    assert {"webhook", "webhook_events"} <= set(submission)
    assert {"webhook", "webhook_events"} <= set(
        spec["components"]["schemas"]["BatchSubmission"]["properties"]
    )
