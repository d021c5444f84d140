"""`?wait=N` on real Postgres and Redis: a waiting request holds no database connection and is woken by
the change notification that follows a state change."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import update

from api.app import create_app
from shared.db import session_factory
from shared.job_events import ChangeNotifier
from shared.models import Job, JobStatus, utcnow
from shared.settings import Settings
from shared.specs import JobKind
from tests.unit.api.conftest import make_tenant

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture()
def app(service_settings: Settings) -> Iterator[Flask]:
    app = create_app(service_settings)
    yield app
    app.extensions["genq"].celery.close()
    app.extensions["genq"].notifier.close()


def _until(condition, seconds: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_waiting_poll_holds_no_connection_and_wakes_on_the_notification(
    app: Flask, service_settings: Settings
) -> None:
    sessions = session_factory(service_settings.sql_url)
    with sessions() as session:
        tenant = make_tenant(session, f"wait-{uuid.uuid4().hex[:8]}")
        job = Job(
            tenant_id=tenant.id, kind=JobKind.generate, queue="genq.sample", status=JobStatus.queued,
            params={"model_id": str(uuid.uuid4()), "count": 1}, created_at=utcnow(), updated_at=utcnow(),
        )  # fmt: skip
        session.add(job)
        session.commit()
        job_id = job.id
    client = app.test_client()
    etag = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).headers["ETag"]
    context = app.extensions["genq"]
    replies = []
    waiting = threading.Thread(
        target=lambda: replies.append(
            client.get(f"/v1/jobs/{job_id}?wait=50", headers={**tenant.headers, "If-None-Match": etag})
        )
    )
    waiting.start()
    _until(lambda: context.waiters.waiting == 1 and context.waiters._subscribed.is_set())
    time.sleep(0.2)  # past the read that follows registration
    assert context.sessions.kw["bind"].pool.checkedout() == 0  # the waiter holds no connection

    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.running))
    notifier = ChangeNotifier(service_settings.broker_url)
    notifier.changed([job_id])
    notifier.close()
    waiting.join(timeout=30)
    [reply] = replies
    assert reply.status_code == 200 and reply.json["status"] == "running"
    assert context.waiters.waiting == 0
