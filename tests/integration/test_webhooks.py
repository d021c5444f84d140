"""Webhooks end to end: the API on Postgres and Redis, a real GPU-shaped worker running tiny jobs, the
webhook worker delivering to a real HTTP receiver on 127.0.0.1, signatures checked by the
`standardwebhooks` verifier."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook, WebhookVerificationError

from api.app import create_app
from shared.db import session_factory
from shared.models import Job, JobStatus, Tenant, WebhookDelivery
from shared.queue import queue_for
from shared.settings import Settings
from shared.specs import JobKind
from shared.webhooks import new_secret, rotate_secret
from tests.integration.conftest import JobClient, Workers, settings_from_env
from tests.receiver import Received, running
from tests.unit.api.conftest import make_tenant

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TINY = {"family": "cnn", "dataset": "digits", "options": {"max_steps": 5, "width": 8, "batch_size": 16}}
LONG = {"family": "cnn", "dataset": "digits", "options": {"max_steps": 100_000, "width": 8, "batch_size": 16}}


@pytest.fixture(scope="module")
def hook_env(module_env: dict[str, str]) -> dict[str, str]:
    return {
        **module_env,
        "GENQ_WEBHOOK_QUEUE": f"genq.webhooks.{uuid.uuid4().hex[:8]}",
        "GENQ_WEBHOOK_ALLOW_HTTP": "true",
        "GENQ_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on 127.0.0.1
        "GENQ_WEBHOOK_RETRY_BASE_SECONDS": "0.3",
        "GENQ_WEBHOOK_POLL_SECONDS": "0.2",
        "GENQ_WEBHOOK_TIMEOUT_SECONDS": "60",  # a held (slow) request is not cut short mid-test
    }


@pytest.fixture(scope="module")
def settings(hook_env: dict[str, str]) -> Settings:
    return settings_from_env(hook_env)


@pytest.fixture(scope="module")
def pool(hook_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    workers = Workers(hook_env, tmp_path_factory.mktemp("webhook-worker-logs"))
    try:
        workers.start(wait=False)
        workers.start_webhooks()
        workers.started[0].wait_ready()
        yield workers
    finally:
        workers.stop_all()
        broker = redis.Redis.from_url(hook_env["GENQ_BROKER_URL"])
        for key in broker.keys(f"{hook_env['GENQ_WEBHOOK_QUEUE']}*"):
            broker.delete(key)
        broker.close()


@pytest.fixture()
def app(settings: Settings, pool: Workers) -> Iterator[Flask]:
    app = create_app(settings)  # the real publisher: messages to Redis
    yield app
    app.extensions["genq"].celery.close()


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture()
def sessions(settings: Settings) -> sessionmaker[Session]:
    return session_factory(settings.sql_url)


@pytest.fixture()
def tenant(sessions: sessionmaker[Session]) -> tuple[dict[str, str], str, uuid.UUID]:
    """(auth headers, webhook secret, tenant id)."""
    with sessions() as session:
        made = make_tenant(session, f"hooks-{uuid.uuid4().hex[:8]}")
        secret = rotate_secret(session, session.get(Tenant, made.id))  # type: ignore[arg-type]
        session.commit()
    return made.headers, secret, made.id


@pytest.fixture()
def jobs(settings: Settings) -> Iterator[JobClient]:
    client = JobClient(settings)
    yield client
    client.close()


def verified(received: list[Received], secret: str) -> list[dict[str, Any]]:
    """Every request's payload, each checked by the standard verifier (raises on a bad signature)."""
    return [Webhook(secret).verify(r.body, r.headers) for r in received]


def types(received: list[Received]) -> list[str]:
    return [json.loads(r.body)["type"] for r in received]


def submit(
    client: FlaskClient, headers: dict[str, str], body: dict[str, Any], path: str = "/v1/jobs"
) -> dict:
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 202, response.json
    return response.json


def unpublished_job(
    sessions: sessionmaker[Session], settings: Settings, tenant_id: uuid.UUID, url: str
) -> str:
    """A queued job no worker will see (never published): canceling it is the API's work alone."""
    with sessions.begin() as session:
        job = Job(
            tenant_id=tenant_id, kind=JobKind.train, params=TINY, queue=queue_for(JobKind.train, settings),
            webhook_url=url, webhook_events="started,completed",
        )  # fmt: skip
        session.add(job)
        session.flush()
        return str(job.id)


def test_a_job_and_a_batch_get_signed_started_and_completed(
    client: FlaskClient, tenant: tuple[dict[str, str], str, uuid.UUID]
) -> None:
    headers, secret, _ = tenant
    with running() as receiver:
        job = submit(client, headers, {"kind": "train", "params": TINY, "webhook": receiver.url})
        batch = submit(
            client,
            headers,
            {"items": [{"kind": "train", "params": TINY}] * 2, "webhook": receiver.url},
            "/v1/batches",
        )
        received = receiver.wait_for(
            lambda r: {"job.completed", "batch.completed"} <= set(types(r)), timeout=240
        )
        time.sleep(1.0)  # nothing more is coming: no duplicate events
        received = receiver.wait_for(lambda r: True)
    payloads = verified(received, secret)
    by_type = {p["type"]: p for p in payloads}
    assert sorted(p["type"] for p in payloads) == sorted(
        ["job.started", "job.completed", "batch.started", "batch.completed"]
    )
    assert (
        by_type["job.started"]["data"]["id"] == job["id"]
        and by_type["job.started"]["data"]["status"] == "running"
    )
    assert by_type["job.completed"]["data"]["status"] == "succeeded"
    assert by_type["job.completed"]["data"]["result"]["model_id"]
    completed = by_type["batch.completed"]["data"]
    assert completed["id"] == batch["id"] and completed["done"] and completed["counts"]["succeeded"] == 2
    assert len({r.headers["webhook-id"] for r in received}) == 4
    with pytest.raises(WebhookVerificationError):  # another secret does not verify
        Webhook(new_secret()).verify(received[0].body, received[0].headers)


def test_a_receiver_failing_twice_gets_the_same_webhook_id_three_times(
    client: FlaskClient,
    tenant: tuple[dict[str, str], str, uuid.UUID],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    headers, secret, tenant_id = tenant
    with running(statuses=[500, 503]) as receiver:
        job_id = unpublished_job(sessions, settings, tenant_id, receiver.url)
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).json["status"] == "canceled"
        received = receiver.wait_for(lambda r: len(r) >= 3)
        log = client.get(f"/v1/webhooks/deliveries?job={job_id}", headers=headers).json["deliveries"]
        deadline = time.monotonic() + 30
        while log[0]["status"] != "succeeded" and time.monotonic() < deadline:  # the 200 is being recorded
            time.sleep(0.1)
            log = client.get(f"/v1/webhooks/deliveries?job={job_id}", headers=headers).json["deliveries"]
        (delivery,) = log
        assert [(a["number"], a["status_code"]) for a in delivery["attempts"]] == [
            (1, 500),
            (2, 503),
            (3, 200),
        ]
        assert all(a["latency_ms"] > 0 for a in delivery["attempts"])
        resent = client.post(f"/v1/webhooks/deliveries/{delivery['id']}/resend", headers=headers)
        assert resent.status_code == 202
        received = receiver.wait_for(lambda r: len(r) >= 4)
    assert {r.headers["webhook-id"] for r in received} == {delivery["id"]}
    assert len({r.body for r in received}) == 1  # the same event, signed anew for each attempt
    assert [p["type"] for p in verified(received, secret)] == ["job.completed"] * 4
    assert delivery["status"] == "succeeded" and delivery["event"] == "job.completed"


def test_a_slow_receiver_delays_neither_a_job_nor_a_cancel(
    client: FlaskClient,
    tenant: tuple[dict[str, str], str, uuid.UUID],
    jobs: JobClient,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    headers, _, tenant_id = tenant
    release = threading.Event()
    with running(hold=release) as receiver:
        quick = submit(client, headers, {"kind": "train", "params": TINY, "webhook": receiver.url})
        receiver.wait_for(lambda r: len(r) >= 1)  # job.started: held
        finished = jobs.wait(uuid.UUID(quick["id"]), timeout=120)
        assert finished.status == JobStatus.succeeded
        assert receiver.answered == 0  # its started event is still held by the receiver

        long = submit(client, headers, {"kind": "train", "params": LONG, "webhook": receiver.url})
        jobs.wait(uuid.UUID(long["id"]), JobStatus.running, timeout=120)
        canceled = client.post(f"/v1/jobs/{long['id']}/cancel", headers=headers)
        assert canceled.status_code == 200 and canceled.json["status"] in ("canceling", "canceled")
        stopped = jobs.wait(uuid.UUID(long["id"]), timeout=120)
        assert stopped.status == JobStatus.canceled

        queued = unpublished_job(sessions, settings, tenant_id, receiver.url)
        assert client.post(f"/v1/jobs/{queued}/cancel", headers=headers).json["status"] == "canceled"
        assert receiver.answered == 0
        held_until = time.time()
        release.set()
        receiver.wait_for(lambda r: {"job.completed"} <= set(types(r)) and receiver.answered >= 3)
    # The job finished, the running job stopped and the queued one was canceled, all while the receiver
    # had not answered a single request.
    assert finished.finished_at.timestamp() < held_until  # type: ignore[union-attr]
    assert stopped.finished_at.timestamp() < held_until  # type: ignore[union-attr]


def test_a_down_receiver_does_not_delay_the_job_and_its_failures_are_logged(
    client: FlaskClient, tenant: tuple[dict[str, str], str, uuid.UUID], jobs: JobClient
) -> None:
    headers, _, _ = tenant
    with running() as receiver:
        url = receiver.url  # nothing listens there once the block ends
    job = submit(client, headers, {"kind": "train", "params": TINY, "webhook": url})
    finished = jobs.wait(uuid.UUID(job["id"]), timeout=120)
    assert finished.status == JobStatus.succeeded
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = client.get(f"/v1/webhooks/deliveries?job={job['id']}", headers=headers).json["deliveries"]
        if len(log) == 2 and all(len(d["attempts"]) >= 2 for d in log):
            break
        time.sleep(0.2)
    assert sorted(d["event"] for d in log) == ["job.completed", "job.started"]
    for delivery in log:
        assert delivery["status"] == "pending" and delivery["next_attempt_at"] is not None  # still retrying
        assert all(a["status_code"] is None and "ConnectionError" in a["error"] for a in delivery["attempts"])
    started = min(log, key=lambda d: d["created_at"])
    # The first attempt failed before the job finished, and the job finished regardless.
    assert started["attempts"][0]["started_at"] < finished.finished_at.isoformat()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://localhost:8443/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.5/hook",
        "https://[::1]/hook",
        "http://203.0.113.10/hook",  # plain http
        "not a url",
    ],
)
def test_internal_or_bad_targets_are_422_and_nothing_is_written(
    tenant: tuple[dict[str, str], str, uuid.UUID],
    settings: Settings,
    sessions: sessionmaker[Session],
    url: str,
) -> None:
    strict = settings.model_copy(update={"webhook_allow_private": False, "webhook_allow_http": False})
    app = create_app(strict)
    headers, _, tenant_id = tenant
    try:
        client = app.test_client()
        for path, body in (
            ("/v1/jobs", {"kind": "train", "params": TINY, "webhook": url}),
            ("/v1/batches", {"items": [{"kind": "train", "params": TINY}], "webhook": url}),
        ):
            response = client.post(path, json=body, headers=headers)
            assert response.status_code == 422
            assert response.json["error"]["details"][0]["field"] == "webhook"
            assert response.json["error"]["message"].startswith("webhook: ")
    finally:
        app.extensions["genq"].celery.close()
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)) == 0
        assert (
            session.scalar(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.tenant_id == tenant_id)
            )
            == 0
        )


def test_the_webhook_worker_never_imports_torch(pool: Workers) -> None:
    webhook_worker = next(w for w in pool.started if w.name.startswith("webhooks"))
    pid = webhook_worker.process.pid
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "libtorch" not in maps and webhook_worker.process.poll() is None
