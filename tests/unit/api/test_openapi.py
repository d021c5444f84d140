"""The OpenAPI document is valid, covers every route, and matches what the views return."""

from __future__ import annotations

import re
import uuid

from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from sqlalchemy.orm import Session

from api import schemas
from api.views import batch_view, dataset_view, job_summary, job_view, model_view
from shared.models import Batch, Dataset, Job, JobStatus, utcnow
from shared.specs import JobKind
from tests.unit.api.conftest import Tenant, add_model

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def test_document_is_valid_openapi(client: FlaskClient) -> None:
    response = client.get("/v1/openapi.json")  # public: no key
    assert response.status_code == 200
    spec = response.json
    validate(spec)
    schemas_ = spec["components"]["schemas"]
    assert {"JobSubmission", "BatchSubmission", "TrainParams", "GenerateParams", "EditParams"} <= set(
        schemas_
    )
    assert schemas_["GenerateParams"]["properties"]["count"]["maximum"] == 100_000  # from the spec itself
    post = spec["paths"]["/v1/jobs"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobSubmission"
    }
    assert {"202", "200", "409", "422", "401"} <= set(post["responses"])


def test_every_flask_route_is_documented(app: Flask, client: FlaskClient) -> None:
    paths = client.get("/v1/openapi.json").json["paths"]
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("dashboard."):
            continue  # the dashboard's HTML pages are not the JSON API
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods & METHODS:
            routes.add((path, method.lower()))
    documented = {(path, method) for path, ops in paths.items() for method in ops}
    assert routes == documented


def _keys(model: type) -> set[str]:
    return set(model.model_fields)


def test_views_return_exactly_the_documented_fields(app: Flask, session: Session, tenant: Tenant) -> None:
    now = utcnow()
    job = Job(
        id=uuid.uuid4(), tenant_id=tenant.id, kind=JobKind.train, params={}, status=JobStatus.queued,
        queue="q", priority=0, attempts=0, created_at=now, updated_at=now, artifacts=[],
    )  # fmt: skip
    batch = Batch(id=uuid.uuid4(), tenant_id=tenant.id, total=1, created_at=now)
    dataset = Dataset(
        id=uuid.uuid4(), tenant_id=tenant.id, name="d", format="zip", object_key="k", size_bytes=1,
        sha256="0", num_images=1, image_size=8, channels=1, class_names=[], created_at=now,
    )  # fmt: skip
    model = add_model(session, tenant.id)
    with app.app_context():
        store = app.extensions["genq"].store
        assert set(job_summary(job)) == _keys(schemas.JobSummary)
        assert set(job_view(job, store, 0)) == _keys(schemas.JobView)
        assert set(batch_view(batch, {})) == _keys(schemas.BatchView)
        assert set(model_view(model, store)) == _keys(schemas.ModelView)
        assert set(dataset_view(dataset)) == _keys(schemas.DatasetView)
        job.progress = {"phase": "train", "step": 1, "total": 2}
        assert set(job_summary(job)["progress"]) == _keys(schemas.Progress)
