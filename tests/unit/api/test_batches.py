"""POST/GET /v1/batches: lists and templates, one transaction, item order, counts, cancel, idempotency."""

from __future__ import annotations

import uuid

from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus
from shared.scheduling import order_key
from shared.specs import MAX_BATCH_ITEMS
from tests.unit.api.conftest import RecordingWake, Tenant, add_model, count_rows


def template_batch(model_id: object, seeds: list[int], **extra: object) -> dict:
    template = {"kind": "generate", "params": {"model_id": str(model_id), "count": 2}}
    return {"template": template, "seeds": seeds, **extra}


def test_template_batch_expands_in_order_and_holds_every_job_for_the_scheduler(
    client: FlaskClient, tenant: Tenant, session: Session, wakes: RecordingWake
) -> None:
    model = add_model(session, tenant.id, "vae")
    body = template_batch(model.id, [5, 6, 7], labels=[1, 2, 3], priority=4)
    response = client.post("/v1/batches", json=body, headers=tenant.headers)
    assert response.status_code == 202, response.json
    batch = response.json
    assert response.headers["Location"] == f"/v1/batches/{batch['id']}"
    assert batch["total"] == 3 and batch["counts"]["queued"] == 3 and not batch["done"]
    assert wakes.calls == [{"genq.sample"}]
    jobs = session.scalars(select(Job).where(Job.batch_id == uuid.UUID(batch["id"])).order_by(Job.created_at))
    jobs = list(jobs)
    assert [str(j.id) for j in jobs] == batch["job_ids"]
    assert [(j.params["seed"], j.params["labels"]) for j in jobs] == [(5, 1), (6, 2), (7, 3)]
    assert all(j.published_at is None and j.priority == 4 for j in jobs)
    assert [j.order_key for j in jobs] == [order_key(4, seq) for seq in (1, 2, 3)]  # the tenant's order
    listed = client.get(f"/v1/jobs?batch={batch['id']}", headers=tenant.headers).json["jobs"]
    assert [j["id"] for j in listed] == batch["job_ids"][::-1]  # newest first


def test_item_list_with_own_priorities_and_kinds(
    client: FlaskClient, tenant: Tenant, session: Session, wakes: RecordingWake
) -> None:
    model = add_model(session, tenant.id, "gan")
    items = [
        {"kind": "train", "params": {"family": "cnn"}, "priority": 9},
        {"kind": "generate", "params": {"model_id": str(model.id), "count": 1}},
    ]
    response = client.post("/v1/batches", json={"items": items, "priority": 2}, headers=tenant.headers)
    assert response.status_code == 202
    jobs = session.scalars(select(Job).order_by(Job.created_at)).all()
    assert [(j.kind.value, j.priority, j.order_key) for j in jobs] == [
        ("train", 9, order_key(9, 1)),
        ("generate", 2, order_key(2, 2)),
    ]
    assert wakes.calls == [{"genq.train", "genq.sample"}]


def test_a_bad_item_rejects_the_whole_batch_naming_it(
    client: FlaskClient, tenant: Tenant, session: Session, wakes: RecordingWake
) -> None:
    model = add_model(session, tenant.id, "gan")
    good = {"kind": "generate", "params": {"model_id": str(model.id), "count": 1}}
    cases = [
        ({"items": [good, {**good, "params": {"model_id": str(model.id), "count": -1}}]}, 422,
         "items.1.params.count"),
        ({"items": [good, {"kind": "generate", "params": {"model_id": str(uuid.uuid4()), "count": 1}}]}, 404,
         "items.1.params.model_id"),
        (template_batch(uuid.uuid4(), [1]), 404, "template.params.model_id"),
        (template_batch(model.id, [1, 2], labels=[1]), 422, "labels"),
        (template_batch(model.id, [1, -2]), 422, "seeds.1"),
        ({"items": [good] * (MAX_BATCH_ITEMS + 1)}, 422, "items"),
        ({"template": good}, 422, "template"),
        ({"items": [good], "template": good}, 422, "body"),
    ]  # fmt: skip
    for body, status, field in cases:
        response = client.post("/v1/batches", json=body, headers=tenant.headers)
        assert response.status_code == status, (field, response.json)
        assert response.json["error"]["details"][0]["field"] == field, response.json
    assert count_rows(session) == (0, 0) and wakes.calls == []


def test_counts_and_cancel(client: FlaskClient, tenant: Tenant, session: Session) -> None:
    model = add_model(session, tenant.id, "gan")
    response = client.post("/v1/batches", json=template_batch(model.id, [1, 2, 3, 4]), headers=tenant.headers)
    batch_id, ids = response.json["id"], [uuid.UUID(i) for i in response.json["job_ids"]]
    session.execute(update(Job).where(Job.id == ids[0]).values(status=JobStatus.succeeded))
    session.execute(update(Job).where(Job.id == ids[1]).values(status=JobStatus.running))
    session.commit()
    view = client.get(f"/v1/batches/{batch_id}", headers=tenant.headers).json
    assert view["counts"] == {
        "queued": 2, "running": 1, "succeeded": 1, "failed": 0, "canceling": 0, "canceled": 0
    }  # fmt: skip
    assert view["finished"] == 1 and not view["canceled"]
    for _ in range(2):
        canceled = client.post(f"/v1/batches/{batch_id}/cancel", headers=tenant.headers)
        assert canceled.status_code == 200
        assert canceled.json["canceled"] and canceled.json["canceled_at"]
        counts = canceled.json["counts"]
        assert (counts["succeeded"], counts["canceling"], counts["canceled"], counts["queued"]) == (
            1,
            1,
            2,
            0,
        )


def test_idempotent_batches(
    client: FlaskClient, tenant: Tenant, other: Tenant, session: Session, wakes: RecordingWake
) -> None:
    model = add_model(session, tenant.id, "gan")
    headers = {**tenant.headers, "Idempotency-Key": "nightly"}
    first = client.post("/v1/batches", json=template_batch(model.id, [3, 1, 2]), headers=headers)
    again = client.post("/v1/batches", json=template_batch(model.id, [3, 1, 2]), headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json["id"] == first.json["id"] and again.json["job_ids"] == first.json["job_ids"]
    reordered = client.post("/v1/batches", json=template_batch(model.id, [1, 2, 3]), headers=headers)
    assert reordered.status_code == 409
    assert reordered.json["error"]["details"][0]["field"] == "Idempotency-Key"
    assert len(wakes.calls) == 1 and count_rows(session) == (3, 1)


def test_other_tenants_batches_are_not_found(
    client: FlaskClient, tenant: Tenant, other: Tenant, session: Session
) -> None:
    model = add_model(session, other.id, "gan")
    batch_id = client.post("/v1/batches", json=template_batch(model.id, [1]), headers=other.headers).json[
        "id"
    ]
    assert client.get(f"/v1/batches/{batch_id}", headers=tenant.headers).status_code == 404
    assert client.post(f"/v1/batches/{batch_id}/cancel", headers=tenant.headers).status_code == 404
    assert client.get(f"/v1/batches/{batch_id}", headers=other.headers).json["counts"]["queued"] == 1
