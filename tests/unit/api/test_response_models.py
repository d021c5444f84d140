"""The views answer with exactly their declared response models: real requests through the real routes,
each answer validated against its model by the OpenAPI plugin (GENQ_CHECK_RESPONSES)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from api.app import create_app
from api.routes import usage
from shared.models import Dataset, Job, utcnow
from shared.settings import Settings
from tests.unit.api.conftest import RecordingWake, Tenant, add_model

TRAIN = {"kind": "train", "params": {"family": "cnn", "options": {"epochs": 1}}}


@pytest.fixture()
def checked(settings: Settings, session: Session, wakes: RecordingWake) -> Iterator[FlaskClient]:
    app: Flask = create_app(settings, wake=wakes)
    app.config["GENQ_CHECK_RESPONSES"] = True
    yield app.test_client()
    app.extensions["genq"].celery.close()


def test_a_view_that_disagrees_with_its_model_is_caught(
    checked: FlaskClient, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = usage.usage_view
    monkeypatch.setattr(usage, "usage_view", lambda *args: {**view(*args), "surprise": 1})
    assert checked.get("/v1/usage", headers=tenant.headers).status_code == 500


def test_every_answer_matches_its_model(checked: FlaskClient, tenant: Tenant, session: Session) -> None:
    def ok(method: str, url: str, status: int = 200, headers: dict | None = None, **kwargs: object) -> dict:
        response = checked.open(
            url, method=method.upper(), headers={**tenant.headers, **(headers or {})}, **kwargs
        )
        assert response.status_code == status, (url, response.json)
        return response.json

    headers = {**tenant.headers, "Idempotency-Key": "one"}
    created = checked.post("/v1/jobs", json=TRAIN, headers=headers)
    assert created.status_code == 202, created.json
    assert checked.post("/v1/jobs", json=TRAIN, headers=headers).status_code == 200
    job_id = created.json["id"]
    job = session.get(Job, uuid.UUID(job_id))
    assert job is not None
    job.progress = {"phase": "train", "step": 1, "total": 2, "metrics": {"loss": 0.5}}
    session.commit()
    read = ok("get", f"/v1/jobs/{job_id}")
    assert read["progress"]["percent"] == 50.0
    ok("get", f"/v1/jobs/{job_id}?wait=1", headers={**tenant.headers, "If-None-Match": '"old"'})
    ok("get", "/v1/jobs?status=queued,succeeded&limit=1")
    ok("post", f"/v1/jobs/{job_id}/cancel")

    model = add_model(session, tenant.id)
    generate = {"kind": "generate", "params": {"model_id": str(model.id), "count": 4}}
    batch = ok("post", "/v1/batches", 202, json={"items": [generate, generate]})
    ok("get", f"/v1/batches/{batch['id']}")
    ok("post", f"/v1/batches/{batch['id']}/cancel")

    ok("get", "/v1/models")
    ok("get", f"/v1/models/{model.id}")
    now = utcnow()
    dataset = Dataset(
        id=uuid.uuid4(), tenant_id=tenant.id, name="d", format="zip", object_key="k", size_bytes=1,
        sha256="0", num_images=1, image_size=8, channels=1, class_names=["a"], created_at=now,
    )  # fmt: skip
    session.add(dataset)
    session.commit()
    ok("get", "/v1/datasets")
    ok("get", f"/v1/datasets/{dataset.id}")
    ok("get", "/v1/webhooks/deliveries")
    ok("get", "/v1/usage")
    ok("get", "/healthz")
    assert checked.get("/readyz").status_code in (200, 503)
    ok("get", f"/v1/jobs/{uuid.uuid4()}", 404)  # errors are declared models too
    ok("get", "/v1/jobs?limit=0", 400)
