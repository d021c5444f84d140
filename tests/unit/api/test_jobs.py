"""POST/GET /v1/jobs: submit, idempotency, references, publish failures, views, listing, cancel."""

from __future__ import annotations

import datetime as dt
import uuid

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import Artifact, Job, JobStatus, utcnow
from shared.scheduling import order_key
from shared.specs import JobKind
from tests.unit.api.conftest import RecordingWake, Tenant, add_dataset, add_model, count_rows

TRAIN = {"kind": "train", "params": {"family": "cnn", "options": {"epochs": 1}}}


def generate(model_id: object, **params: object) -> dict:
    return {"kind": "generate", "params": {"model_id": str(model_id), "count": 4, **params}}


def test_submit_writes_a_held_job_and_wakes_the_scheduler(
    client: FlaskClient, tenant: Tenant, session: Session, wakes: RecordingWake
) -> None:
    response = client.post("/v1/jobs", json={**TRAIN, "priority": 7}, headers=tenant.headers)
    assert response.status_code == 202
    body = response.json
    assert response.headers["Location"] == f"/v1/jobs/{body['id']}"
    assert body["status"] == "queued" and body["kind"] == "train" and body["priority"] == 7
    assert body["params"]["options"] == {"epochs": 1} and body["params"]["dataset"] == "fashion-mnist"
    assert body["queue_position"] == 0 and body["published_at"] is None and body["waiting_for"] == "worker"
    assert wakes.calls == [{"genq.train"}]
    job = session.get(Job, uuid.UUID(body["id"]))
    assert job.tenant_id == tenant.id and job.queue == "genq.train" and job.published_at is None
    assert job.order_key == order_key(7, 1)


def test_idempotency_key_returns_the_same_job_or_409(
    client: FlaskClient, tenant: Tenant, other: Tenant, session: Session, wakes: RecordingWake
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "order-17"}
    first = client.post("/v1/jobs", json=TRAIN, headers=headers)
    again = client.post("/v1/jobs", json=TRAIN, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json["id"] == first.json["id"]
    assert len(wakes.calls) == 1  # the replay woke nobody: nothing new
    # Defaults written out or left implicit are the same request.
    explicit = {**TRAIN, "priority": 0, "params": {**TRAIN["params"], "dataset": "fashion-mnist"}}
    assert client.post("/v1/jobs", json=explicit, headers=headers).json["id"] == first.json["id"]
    different = client.post("/v1/jobs", json={**TRAIN, "priority": 3}, headers=headers)
    assert different.status_code == 409
    assert different.json["error"]["details"][0]["field"] == "Idempotency-Key"
    assert "Idempotency-Key" in different.json["error"]["message"]
    # Keys are per tenant.
    theirs = client.post("/v1/jobs", json=TRAIN, headers={**other.headers, "Idempotency-Key": "order-17"})
    assert theirs.status_code == 202 and theirs.json["id"] != first.json["id"]
    assert count_rows(session) == (2, 0)


def test_references_are_checked_at_submit(
    client: FlaskClient, tenant: Tenant, other: Tenant, session: Session, wakes: RecordingWake
) -> None:
    gan = add_model(session, tenant.id, "gan")
    cnn = add_model(session, tenant.id, "cnn")
    theirs = add_model(session, other.id, "vae")
    dataset = add_dataset(session, tenant.id)
    cases = [
        (generate(uuid.uuid4()), 404, "params.model_id"),
        (generate(theirs.id), 404, "params.model_id"),
        (generate(cnn.id), 422, "params.model_id"),
        ({"kind": "evaluate", "params": {"model_id": str(gan.id), "classifier_id": str(gan.id)}}, 422,
         "params.classifier_id"),
        ({"kind": "train", "params": {"family": "gan", "dataset": str(uuid.uuid4())}}, 404, "params.dataset"),
        ({"kind": "edit", "params": {"model_id": str(gan.id), "operation": "reconstruct",
                                     "source": {"dataset": "mine", "indices": [0]}}},
         422, "params.source.dataset"),
    ]  # fmt: skip
    for body, status, field in cases:
        response = client.post("/v1/jobs", json=body, headers=tenant.headers)
        assert response.status_code == status, (body, response.json)
        assert response.json["error"]["details"][0]["field"] == field
        assert response.json["error"]["message"].startswith(field)
    assert count_rows(session) == (0, 0) and wakes.calls == []
    ok = [
        generate(gan.id),
        {"kind": "evaluate", "params": {"model_id": str(cnn.id), "classifier_id": str(cnn.id)}},
        {"kind": "train", "params": {"family": "vae", "dataset": str(dataset.id)}},
        {"kind": "edit", "params": {"model_id": str(gan.id), "operation": "reconstruct",
                                    "source": {"dataset": str(dataset.id), "indices": [0]}}},
    ]  # fmt: skip
    for body in ok:
        assert client.post("/v1/jobs", json=body, headers=tenant.headers).status_code == 202, body
    assert count_rows(session) == (4, 0)


def _add_job(session: Session, tenant_id: uuid.UUID, **values: object) -> Job:
    now = utcnow()
    created = values.setdefault("created_at", now)
    # The tenant's order as submission gives it: priority, then seconds since 2026 as the sequence.
    seq = int((created - dt.datetime(2026, 1, 1, tzinfo=dt.UTC)).total_seconds())
    values.setdefault("order_key", order_key(values.get("priority", 0), seq))
    job = Job(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        kind=values.pop("kind", JobKind.generate),
        params=values.pop("params", {"model_id": str(uuid.uuid4()), "count": 1}),
        status=values.pop("status", JobStatus.queued),
        queue=values.pop("queue", "genq.sample"),
        created_at=values.pop("created_at", now),
        updated_at=now,
        **values,
    )
    session.add(job)
    session.commit()
    return job


def test_job_view_progress_position_artifacts_and_error(
    client: FlaskClient, tenant: Tenant, session: Session
) -> None:
    base = utcnow() - dt.timedelta(minutes=5)
    ahead = _add_job(session, tenant.id, priority=5, created_at=base + dt.timedelta(seconds=99))
    _add_job(session, tenant.id, priority=2, created_at=base)  # same priority, older: ahead
    _add_job(session, tenant.id, priority=1, created_at=base)  # lower priority: behind
    _add_job(session, tenant.id, priority=2, created_at=base + dt.timedelta(seconds=11))  # newer: behind
    _add_job(session, tenant.id, priority=9, status=JobStatus.running)  # not queued
    _add_job(session, tenant.id, priority=9, queue="genq.train", kind=JobKind.train, params={"family": "cnn"})
    mine = _add_job(session, tenant.id, priority=2, created_at=base + dt.timedelta(seconds=10))
    assert client.get(f"/v1/jobs/{mine.id}", headers=tenant.headers).json["queue_position"] == 2
    assert client.get(f"/v1/jobs/{ahead.id}", headers=tenant.headers).json["queue_position"] == 0

    started = utcnow() - dt.timedelta(seconds=30)
    running = _add_job(
        session,
        tenant.id,
        kind=JobKind.train,
        params={"family": "gan"},
        status=JobStatus.running,
        started_at=started,
        attempts=1,
        progress={"phase": "train", "step": 25, "total": 100, "metrics": {"loss": 0.5}},
        result={"model_id": "m-1", "metrics": {"fid": 12.0}},
    )
    session.add(
        Artifact(
            job_id=running.id,
            tenant_id=tenant.id,
            name="grid.png",
            key=f"tenants/{tenant.id}/jobs/{running.id}/grid.png",
            content_type="image/png",
            size=3,
            sha256="a" * 64,
        )
    )
    session.commit()
    body = client.get(f"/v1/jobs/{running.id}", headers=tenant.headers).json
    progress = body["progress"]
    assert (
        progress["percent"] == 25.0 and progress["phase"] == "train" and progress["metrics"] == {"loss": 0.5}
    )
    assert 85 <= progress["eta_seconds"] <= 100  # 30 s for 25 steps, 75 to go
    assert body["queue_position"] is None and body["attempts"] == 1
    assert body["model_id"] == "m-1" and body["metrics"] == {"fid": 12.0}
    [artifact] = body["artifacts"]
    assert artifact["name"] == "grid.png" and artifact["size"] == 3 and artifact["sha256"] == "a" * 64
    assert (
        artifact["url"].startswith("http://genq.test/v1/objects/tenants/") and "signature=" in artifact["url"]
    )

    failed = _add_job(session, tenant.id, status=JobStatus.failed, error_code="oom", error_message="too big")
    assert client.get(f"/v1/jobs/{failed.id}", headers=tenant.headers).json["error"] == {
        "code": "oom",
        "message": "too big",
    }


def test_list_is_newest_first_with_cursor_and_filters(
    client: FlaskClient, tenant: Tenant, other: Tenant, session: Session
) -> None:
    base = utcnow()
    jobs = [_add_job(session, tenant.id, created_at=base + dt.timedelta(seconds=i)) for i in range(5)]
    same_time = [_add_job(session, tenant.id, created_at=base + dt.timedelta(seconds=9)) for _ in range(2)]
    _add_job(session, other.id)
    done = _add_job(session, tenant.id, status=JobStatus.succeeded, created_at=base - dt.timedelta(days=1))
    expected = sorted(same_time, key=lambda j: j.id, reverse=True) + jobs[::-1] + [done]
    seen, cursor = [], None
    while True:
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/v1/jobs?{query}", headers=tenant.headers).json
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(j.id) for j in expected]
    succeeded = client.get("/v1/jobs?status=succeeded", headers=tenant.headers).json["jobs"]
    assert [j["id"] for j in succeeded] == [str(done.id)]
    both = client.get("/v1/jobs?status=succeeded,queued&kind=generate", headers=tenant.headers).json["jobs"]
    assert len(both) == 8
    assert client.get("/v1/jobs?kind=train", headers=tenant.headers).json["jobs"] == []


def test_cancel_is_idempotent(client: FlaskClient, tenant: Tenant, session: Session) -> None:
    queued = _add_job(session, tenant.id)
    running = _add_job(session, tenant.id, status=JobStatus.running)
    for _ in range(2):
        response = client.post(f"/v1/jobs/{queued.id}/cancel", headers=tenant.headers)
        assert response.status_code == 200 and response.json["status"] == "canceled"
        assert response.json["finished_at"] is not None
        response = client.post(f"/v1/jobs/{running.id}/cancel", headers=tenant.headers)
        assert response.status_code == 200 and response.json["status"] == "canceling"
    statuses = set(session.scalars(select(Job.status).execution_options(populate_existing=True)))
    assert statuses == {JobStatus.canceled, JobStatus.canceling}


def test_other_tenants_jobs_are_not_found(
    client: FlaskClient, tenant: Tenant, other: Tenant, session: Session
) -> None:
    theirs = _add_job(session, other.id)
    for method, path in (("get", f"/v1/jobs/{theirs.id}"), ("post", f"/v1/jobs/{theirs.id}/cancel")):
        response = getattr(client, method)(path, headers=tenant.headers)
        assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
    assert client.get("/v1/jobs", headers=tenant.headers).json["jobs"] == []
    session.refresh(theirs)
    assert theirs.status == JobStatus.queued


def test_progress_follows_a_time_budget_that_ends_training_first(
    client: FlaskClient, tenant: Tenant, session: Session
) -> None:
    job = _add_job(
        session,
        tenant.id,
        kind=JobKind.train,
        params={"family": "gan", "max_seconds": 60},
        status=JobStatus.running,
        started_at=utcnow() - dt.timedelta(seconds=30),
        progress={"phase": "train", "step": 10, "total": 3000},
    )
    progress = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).json["progress"]
    assert 49 <= progress["percent"] <= 52  # half the budget, not 10 / 3000 of the steps
    assert 28 <= progress["eta_seconds"] <= 31


def test_a_succeeded_job_is_complete_whatever_its_step_count(
    client: FlaskClient, tenant: Tenant, session: Session
) -> None:
    job = _add_job(  # a 600 s budget ended training 2,216 steps into max_steps=10,000,000
        session,
        tenant.id,
        kind=JobKind.train,
        params={"family": "gan", "max_seconds": 600, "max_steps": 10_000_000},
        status=JobStatus.succeeded,
        started_at=utcnow() - dt.timedelta(seconds=620),
        progress={"phase": "train", "step": 2216, "total": 10_000_000},
    )
    progress = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).json["progress"]
    assert progress["percent"] == 100.0 and progress["eta_seconds"] == 0.0
