"""The API on real Postgres, Redis and moto's S3 server: jobs are held in SQL, the scheduler is woken over
Redis, and the scheduler's messages really land in the Redis queues."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.app import create_app
from shared.db import session_factory
from shared.models import Artifact, Batch, Job, JobStatus, utcnow
from shared.scheduling import wake_channel
from shared.settings import Settings
from shared.storage import S3Store, job_key
from tests.conftest import free_port
from tests.unit.api.bad_inputs import check_all
from tests.unit.api.conftest import Tenant, add_model, make_tenant
from tests.unit.api.test_models_datasets import png, zip_of
from worker.scheduler import Scheduler

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture()
def session(service_settings: Settings) -> Iterator[Session]:
    with session_factory(service_settings.sql_url)() as session:
        yield session


@pytest.fixture()
def app(service_settings: Settings) -> Iterator[Flask]:
    app = create_app(service_settings)  # the real publisher: one Celery app, messages to Redis
    yield app
    app.extensions["genq"].celery.close()


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def tenant(session: Session) -> Tenant:
    return make_tenant(session, f"api-{uuid.uuid4().hex[:8]}")


@pytest.fixture()
def other(session: Session) -> Tenant:
    return make_tenant(session, f"api-other-{uuid.uuid4().hex[:8]}")


@pytest.fixture()
def broker(redis_url: str, service_settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    for queue in (service_settings.train_queue, service_settings.sample_queue):
        keys = client.keys(f"{queue}*")
        if keys:
            client.delete(*keys)
    client.close()


def queued_messages(broker: redis.Redis, queue: str) -> dict[str, dict]:
    """task id -> message headers, for every message in a queue's Redis lists (one per priority)."""
    found = {}
    for key in broker.keys(f"{queue}*"):
        for raw in broker.lrange(key, 0, -1):
            headers = json.loads(raw)["headers"]
            found[headers["id"]] = {**headers, "redis_key": key.decode()}
    return found


def run_scheduler_pass(settings: Settings) -> dict[str, int]:
    """One pass of the scheduler, here, with no worker announced (a window of one message per queue)."""
    scheduler = Scheduler(settings)
    try:
        return scheduler.run_pass().dispatched
    finally:
        scheduler.close()


def test_submit_holds_the_job_wakes_the_scheduler_which_sends_it(
    client: FlaskClient, tenant: Tenant, session: Session, broker: redis.Redis, service_settings: Settings
) -> None:
    wakes = broker.pubsub(ignore_subscribe_messages=True)
    wakes.subscribe(wake_channel(service_settings.train_queue), wake_channel(service_settings.sample_queue))
    train = client.post(
        "/v1/jobs", json={"kind": "train", "params": {"family": "cnn"}}, headers=tenant.headers
    )
    model = add_model(session, tenant.id, "gan")
    generate = {"kind": "generate", "params": {"model_id": str(model.id), "count": 3}, "priority": 8}
    sample = client.post("/v1/jobs", json=generate, headers=tenant.headers)
    assert (train.status_code, sample.status_code) == (202, 202)
    assert queued_messages(broker, service_settings.train_queue) == {}  # held: the API sends nothing
    woken, deadline = [], time.monotonic() + 5
    while len(woken) < 2 and time.monotonic() < deadline:
        message = wakes.get_message(timeout=0.5)  # None for the subscription's own confirmation
        if message:
            woken.append(message["channel"])
    wakes.close()
    assert woken == [
        wake_channel(service_settings.train_queue).encode(),
        wake_channel(service_settings.sample_queue).encode(),
    ]

    assert run_scheduler_pass(service_settings) == {
        service_settings.train_queue: 1,
        service_settings.sample_queue: 1,
    }
    trains = queued_messages(broker, service_settings.train_queue)
    samples = queued_messages(broker, service_settings.sample_queue)
    assert list(trains) == [train.json["id"]] and list(samples) == [sample.json["id"]]
    assert trains[train.json["id"]]["task"] == "genq.train"
    assert samples[sample.json["id"]]["task"] == "genq.generate"
    assert samples[sample.json["id"]]["redis_key"] == f"{service_settings.sample_queue}:1"  # 9 - priority 8
    for response in (train, sample):
        job = session.get(Job, uuid.UUID(response.json["id"]))
        assert job.status == JobStatus.queued and job.published_at is not None
    assert client.get(f"/v1/jobs/{sample.json['id']}", headers=tenant.headers).json["queue_position"] == 0


def test_concurrent_requests_with_one_idempotency_key_make_one_job(
    client: FlaskClient, tenant: Tenant, session: Session, broker: redis.Redis, service_settings: Settings
) -> None:
    body = {"kind": "train", "params": {"family": "vae", "name": "same"}}
    headers = {**tenant.headers, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    results: list[tuple[int, str]] = []

    def submit() -> None:
        response = client.post("/v1/jobs", json=body, headers=headers)
        results.append((response.status_code, response.json.get("id")))

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(status for status, _ in results) == [200] * 5 + [202]
    assert len({job_id for _, job_id in results}) == 1
    run_scheduler_pass(service_settings)
    assert list(queued_messages(broker, service_settings.train_queue)) == [results[0][1]]
    count = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id))
    assert count == 1


def test_a_broker_outage_leaves_the_job_held_for_the_scheduler(
    service_settings: Settings, tenant: Tenant, session: Session
) -> None:
    down = service_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    app = create_app(down)
    started = time.monotonic()
    response = app.test_client().post(
        "/v1/jobs", json={"kind": "train", "params": {"family": "cnn"}}, headers=tenant.headers
    )
    elapsed = time.monotonic() - started
    app.extensions["genq"].celery.close()
    assert response.status_code == 202 and response.json["published_at"] is None
    job = session.get(Job, uuid.UUID(response.json["id"]))
    assert job.status == JobStatus.queued and job.published_at is None
    assert elapsed < 15


def test_a_10000_item_batch_is_one_insert_and_the_broker_holds_only_the_window(
    client: FlaskClient, tenant: Tenant, session: Session, broker: redis.Redis, service_settings: Settings
) -> None:
    model = add_model(session, tenant.id, "gan")
    body = {
        "template": {"kind": "generate", "params": {"model_id": str(model.id), "count": 16}},
        "seeds": list(range(10_000)),
        "priority": 3,
    }
    started, cpu = time.perf_counter(), time.process_time()
    response = client.post("/v1/batches", json=body, headers=tenant.headers)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"\n10,000-item batch submit (Postgres + Redis): {elapsed:.2f} s wall, {cpu:.2f} s API CPU")
    assert response.status_code == 202, response.json
    batch_id = uuid.UUID(response.json["id"])
    assert len(response.json["job_ids"]) == 10_000
    assert run_scheduler_pass(service_settings) == {service_settings.sample_queue: 1}
    assert run_scheduler_pass(service_settings) == {}  # the window is full until a worker starts one
    sent = queued_messages(broker, service_settings.sample_queue)
    print(f"broker queue length with 10,000 held: {len(sent)} (window: 1, no worker announced)")
    assert list(sent) == response.json["job_ids"][:1]
    unpublished = (
        select(func.count()).select_from(Job).where(Job.batch_id == batch_id, Job.published_at.is_(None))
    )
    assert session.scalar(unpublished) == 9_999
    view = client.get(f"/v1/batches/{batch_id}", headers=tenant.headers).json
    assert view["total"] == 10_000 and view["counts"]["queued"] == 10_000
    canceled = client.post(f"/v1/batches/{batch_id}/cancel", headers=tenant.headers).json
    assert canceled["counts"]["canceled"] == 10_000 and canceled["canceled"]
    assert elapsed < 30, f"a 10,000-item batch took {elapsed:.1f} s"


def test_bad_input_never_writes_or_fails_on_postgres(
    client: FlaskClient, tenant: Tenant, session: Session, broker: redis.Redis, service_settings: Settings
) -> None:
    model = add_model(session, tenant.id, "gan")
    assert check_all(client, tenant.headers, model.id) == []
    assert session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id)) == 0
    assert session.scalar(select(func.count()).select_from(Batch).where(Batch.tenant_id == tenant.id)) == 0
    assert queued_messages(broker, service_settings.sample_queue) == {}


def test_artifacts_download_from_s3_and_tenants_stay_apart(
    client: FlaskClient, tenant: Tenant, other: Tenant, session: Session, service_settings: Settings
) -> None:
    store = S3Store(service_settings)
    now = utcnow()
    job = Job(
        tenant_id=tenant.id, kind="generate", params={"count": 1}, status=JobStatus.succeeded, queue="q",
        created_at=now, updated_at=now, attempts=1, result={"metrics": {"images": 1}},
    )  # fmt: skip
    session.add(job)
    session.flush()
    key = job_key(tenant.id, job.id, "manifest.json")
    store.put_bytes(key, b'{"items": []}', "application/json")
    session.add(
        Artifact(job_id=job.id, tenant_id=tenant.id, name="manifest.json", key=key,
                 content_type="application/json", size=13, sha256="0" * 64)
    )  # fmt: skip
    session.commit()
    view = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).json
    [artifact] = view["artifacts"]
    downloaded = requests.get(artifact["url"], timeout=30)
    assert downloaded.status_code == 200 and downloaded.content == b'{"items": []}'
    assert "manifest.json" in downloaded.headers.get("Content-Disposition", "")
    assert client.get(f"/v1/jobs/{job.id}", headers=other.headers).status_code == 404
    assert client.get("/v1/jobs", headers=other.headers).json["jobs"] == []

    # Uploads go to S3 under the tenant; the other tenant cannot see the row.
    data = zip_of({"a/x.png": png(3), "b/y.png": png(200)})
    uploaded = client.post(
        "/v1/datasets", data={"file": (io.BytesIO(data), "ab.zip")}, headers=tenant.headers,
        content_type="multipart/form-data",
    )  # fmt: skip
    assert uploaded.status_code == 201, uploaded.json
    dataset_id = uploaded.json["id"]
    assert store.get_bytes(f"tenants/{tenant.id}/datasets/{dataset_id}/data.zip") == data
    assert client.get(f"/v1/datasets/{dataset_id}", headers=other.headers).status_code == 404
    # With S3 storage the API serves no objects itself.
    assert client.get(f"/v1/objects/{key}?expires=9999999999&signature=x").status_code == 404


def test_readyz_with_every_service_up(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


# ---------------------------------------------------------------------------------------------------
# Through the API to a real worker and back

TINY_CNN = {"family": "cnn", "dataset": "digits", "options": {"max_steps": 20, "width": 8, "batch_size": 32}}
LONG_CNN = {
    "family": "cnn",
    "dataset": "digits",
    "options": {"max_steps": 1_000_000, "width": 8, "batch_size": 8},
}


def _poll(client: FlaskClient, tenant: Tenant, job_id: str, until: set[str], timeout: float = 150.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json
        if job["status"] in until:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s: {job['progress']}")


@pytest.mark.timeout(420)
def test_submit_run_download_and_cancel_through_the_api(
    workers,
    worker_settings: Settings,
    tenant: Tenant,  # type: ignore[no-untyped-def]
) -> None:
    app = create_app(worker_settings)
    client = app.test_client()
    try:
        workers.start()
        submitted = client.post(
            "/v1/jobs", json={"kind": "train", "params": TINY_CNN}, headers=tenant.headers
        )
        assert submitted.status_code == 202
        job = _poll(client, tenant, submitted.json["id"], {"succeeded", "failed", "canceled"})
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 1 and job["progress"]["percent"] is not None and job["model_id"]
        assert job["artifacts"]
        for artifact in job["artifacts"]:
            content = requests.get(artifact["url"], timeout=30).content
            assert (
                len(content) == artifact["size"] and hashlib.sha256(content).hexdigest() == artifact["sha256"]
            )
        model = client.get(f"/v1/models/{job['model_id']}", headers=tenant.headers).json
        assert model["family"] == "cnn" and model["training_job_id"] == job["id"]
        checkpoint = requests.get(model["checkpoint_url"], timeout=30).content
        assert hashlib.sha256(checkpoint).hexdigest() == model["checkpoint_sha256"]

        long = client.post(
            "/v1/jobs", json={"kind": "train", "params": LONG_CNN}, headers=tenant.headers
        ).json
        running = _poll(client, tenant, long["id"], {"running", "failed"})
        assert running["status"] == "running"
        canceling = client.post(f"/v1/jobs/{long['id']}/cancel", headers=tenant.headers).json
        assert canceling["status"] in ("canceling", "canceled")
        assert (
            _poll(client, tenant, long["id"], {"canceled", "failed", "succeeded"}, 60)["status"] == "canceled"
        )
    finally:
        app.extensions["genq"].celery.close()
