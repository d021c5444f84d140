"""Remembered ETags: a 304 without SQL for an unchanged item, and never a change hidden past its bound."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, update
from sqlalchemy.orm import Session

from api.tag_cache import TRUST_SECONDS, Scope, TagCache
from api.waiting import ChangeWaiters
from shared.db import engine_for
from shared.models import Job, JobStatus, utcnow
from shared.settings import Settings
from tests.unit.api.conftest import Tenant, add_model
from tests.unit.api.test_batches import template_batch
from tests.unit.api.test_polls import Clock, _finished_job


@pytest.fixture()
def waiters(app: Flask, monkeypatch: pytest.MonkeyPatch) -> ChangeWaiters:
    """The app's waiters as though its subscription were confirmed; tests deliver notifications by hand
    (`notify`), or lose them by not doing so."""
    waiters = app.extensions["genq"].waiters
    monkeypatch.setattr(waiters, "ensure_listening", lambda: None)
    waiters._subscribed.set()
    waiters.tags.subscribed()
    return waiters


@pytest.fixture()
def clock(waiters: ChangeWaiters) -> Clock:
    waiters.tags.clock = clock = Clock()
    return clock


class Statements:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *_: object) -> None:
        self.count += 1


@pytest.fixture()
def statements(settings: Settings) -> Iterator[Statements]:
    """Counts the SQL statements sent to the test database."""
    engine, counter = engine_for(settings.sql_url), Statements()
    event.listen(engine, "before_cursor_execute", counter)
    yield counter
    event.remove(engine, "before_cursor_execute", counter)


def notify(waiters: ChangeWaiters, item_id: object) -> None:
    waiters._wake(str(item_id))  # what the listener does with a notification for the item


def conditional(tenant: Tenant, etag: str) -> dict[str, str]:
    return {**tenant.headers, "If-None-Match": etag}


def test_an_unchanged_finished_job_answers_304_without_sql(
    client: FlaskClient, tenant: Tenant, session: Session, waiters: ChangeWaiters, statements: Statements
) -> None:
    job = _finished_job(session, tenant.id)
    first = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers)
    etag = first.headers["ETag"]
    before = statements.count
    for _ in range(3):
        reply = client.get(f"/v1/jobs/{job.id}", headers=conditional(tenant, etag))
        assert reply.status_code == 304 and reply.data == b"" and reply.headers["ETag"] == etag
    weak = client.get(f"/v1/jobs/{job.id}", headers=conditional(tenant, f"W/{etag}"))
    assert weak.status_code == 304  # If-None-Match compares weakly, as the row's 304 does
    assert statements.count == before  # the key and the tag both came from this process's memory
    assert "Content-Type" not in reply.headers and "Date" in reply.headers  # as a 304 from the row
    # A stale copy is answered from the row, as is a read without If-None-Match.
    assert client.get(f"/v1/jobs/{job.id}", headers=conditional(tenant, '"old"')).status_code == 200
    assert client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).data == first.data
    assert statements.count > before


def test_a_changed_job_answers_200_with_its_new_view_once_notified(
    client: FlaskClient, tenant: Tenant, session: Session, waiters: ChangeWaiters
) -> None:
    job = _finished_job(session, tenant.id)
    etag = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).headers["ETag"]
    assert client.get(f"/v1/jobs/{job.id}", headers=conditional(tenant, etag)).status_code == 304
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(status=JobStatus.failed, error_code="x", updated_at=utcnow())
    )
    session.commit()
    notify(waiters, job.id)  # what every writer of a job sends after its commit
    reply = client.get(f"/v1/jobs/{job.id}", headers=conditional(tenant, etag))
    assert reply.status_code == 200 and reply.json["status"] == "failed"
    assert reply.headers["ETag"] != etag
    new = reply.headers["ETag"]
    assert client.get(f"/v1/jobs/{job.id}", headers=conditional(tenant, new)).status_code == 304


def test_a_lost_notification_hides_a_change_for_at_most_the_trust_bound(
    client: FlaskClient, tenant: Tenant, session: Session, waiters: ChangeWaiters, clock: Clock
) -> None:
    job = _finished_job(session, tenant.id)
    etag = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).headers["ETag"]
    job.result = {"count": 1}
    session.commit()  # and no notification arrives
    clock.now += TRUST_SECONDS - 0.1
    assert client.get(f"/v1/jobs/{job.id}", headers=conditional(tenant, etag)).status_code == 304
    clock.now += 0.1
    reply = client.get(f"/v1/jobs/{job.id}", headers=conditional(tenant, etag))
    assert reply.status_code == 200 and reply.json["result"] == {"count": 1}
    assert TRUST_SECONDS <= 5.0  # "a few seconds": the bound clients are told


def test_a_read_that_a_notification_overtakes_is_not_remembered(
    client: FlaskClient,
    tenant: Tenant,
    session: Session,
    waiters: ChangeWaiters,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = _finished_job(session, tenant.id)
    tags = waiters.tags
    put = tags.put

    def put_after_a_change(*args: Any, **kwargs: Any) -> None:
        # The request has read the old row; the change commits and is notified before its tag is stored.
        session.execute(update(Job).where(Job.id == job.id).values(result={"count": 1}, updated_at=utcnow()))
        session.commit()
        notify(waiters, job.id)
        put(*args, **kwargs)

    monkeypatch.setattr(tags, "put", put_after_a_change)
    etag = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).headers["ETag"]
    monkeypatch.setattr(tags, "put", put)
    assert len(tags) == 0
    reply = client.get(f"/v1/jobs/{job.id}", headers=conditional(tenant, etag))
    assert reply.status_code == 200 and reply.json["result"] == {"count": 1}


def test_tags_are_kept_only_while_the_subscription_is_confirmed(
    client: FlaskClient, tenant: Tenant, session: Session, waiters: ChangeWaiters, statements: Statements
) -> None:
    job = _finished_job(session, tenant.id)
    etag = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).headers["ETag"]
    assert len(waiters.tags) == 1
    waiters.tags.unsubscribed()  # the listener lost the broker: notifications from now on may be lost
    assert len(waiters.tags) == 0
    before = statements.count
    assert client.get(f"/v1/jobs/{job.id}", headers=conditional(tenant, etag)).status_code == 304
    assert statements.count > before and len(waiters.tags) == 0  # read from the row, not remembered
    waiters.tags.subscribed()
    client.get(f"/v1/jobs/{job.id}", headers=tenant.headers)
    assert len(waiters.tags) == 1


def test_a_remembered_tag_answers_only_its_tenant_and_route(
    client: FlaskClient, tenant: Tenant, other: Tenant, session: Session, waiters: ChangeWaiters
) -> None:
    job = _finished_job(session, tenant.id)
    etag = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).headers["ETag"]
    reply = client.get(f"/v1/jobs/{job.id}", headers=conditional(other, etag))
    assert reply.status_code == 404 and "ETag" not in reply.headers
    assert client.get(f"/v1/batches/{job.id}", headers=conditional(tenant, etag)).status_code == 404
    assert client.get(f"/v1/jobs/{job.id}", headers=conditional(tenant, etag)).status_code == 304


def test_queued_and_running_jobs_are_not_remembered(
    client: FlaskClient, tenant: Tenant, session: Session, waiters: ChangeWaiters
) -> None:
    model = add_model(session, tenant.id)
    body = {"kind": "generate", "params": {"model_id": str(model.id), "count": 1}}
    later = client.post("/v1/jobs", json=body, headers=tenant.headers).json
    url = f"/v1/jobs/{later['id']}"
    first = client.get(url, headers=tenant.headers)
    assert first.json["status"] == "queued" and len(waiters.tags) == 0
    # A job of higher priority moves ahead: the position changes, and no notification names this job.
    client.post("/v1/jobs", json={**body, "priority": 9}, headers=tenant.headers)
    moved = client.get(url, headers=conditional(tenant, first.headers["ETag"]))
    assert moved.status_code == 200 and moved.json["queue_position"] == first.json["queue_position"] + 1
    session.execute(update(Job).where(Job.id == uuid.UUID(later["id"])).values(status=JobStatus.running))
    session.commit()
    assert client.get(url, headers=tenant.headers).json["status"] == "running" and len(waiters.tags) == 0


def test_a_new_download_url_epoch_retires_remembered_tags(
    app: Flask, client: FlaskClient, tenant: Tenant, session: Session, waiters: ChangeWaiters
) -> None:
    job = _finished_job(session, tenant.id)
    etag = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).headers["ETag"]
    urls = app.extensions["genq"].urls
    urls.clock = Clock()
    urls.clock.now = (urls.epoch() + 1) * urls.reuse_seconds  # the next epoch begins; the row is the same
    reply = client.get(f"/v1/jobs/{job.id}", headers=conditional(tenant, etag))
    assert reply.status_code == 200 and reply.headers["ETag"] != etag


def test_batch_reads_answer_from_remembered_tags_until_a_job_of_theirs_changes(
    client: FlaskClient, tenant: Tenant, session: Session, waiters: ChangeWaiters, statements: Statements
) -> None:
    model = add_model(session, tenant.id)
    created = client.post("/v1/batches", json=template_batch(model.id, [1, 2]), headers=tenant.headers)
    url = f"/v1/batches/{created.json['id']}"
    etag = client.get(url, headers=tenant.headers).headers["ETag"]
    before = statements.count
    assert client.get(url, headers=conditional(tenant, etag)).status_code == 304
    assert statements.count == before
    [job_id, _] = created.json["job_ids"]
    session.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(status=JobStatus.running))
    session.commit()
    notify(waiters, created.json["id"])  # a worker names the job and its batch
    reply = client.get(url, headers=conditional(tenant, etag))
    assert reply.status_code == 200 and reply.json["counts"]["running"] == 1


def test_a_wait_on_a_remembered_copy_answers_when_the_item_changes(
    client: FlaskClient, tenant: Tenant, session: Session, waiters: ChangeWaiters, statements: Statements
) -> None:
    model = add_model(session, tenant.id)
    created = client.post("/v1/batches", json=template_batch(model.id, [1]), headers=tenant.headers)
    url = f"/v1/batches/{created.json['id']}"
    etag = client.get(url, headers=tenant.headers).headers["ETag"]
    before = statements.count
    same = client.get(f"{url}?wait=1", headers=conditional(tenant, etag))
    assert same.status_code == 304 and statements.count == before  # a whole wait without SQL
    [job_id] = created.json["job_ids"]

    def finish() -> None:
        time.sleep(0.3)
        session.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(status=JobStatus.succeeded))
        session.commit()
        notify(waiters, created.json["id"])

    changer = threading.Thread(target=finish)
    changer.start()
    started = time.monotonic()
    reply = client.get(f"{url}?wait=30", headers=conditional(tenant, etag))
    changer.join(timeout=10)
    assert reply.status_code == 200 and reply.json["done"] and time.monotonic() - started < 10
    done = reply.headers["ETag"]
    before = statements.count
    assert client.get(f"{url}?wait=30", headers=conditional(tenant, done)).status_code == 304
    assert statements.count == before  # finished and remembered: answered at once


def test_the_tag_cache_is_bounded_and_checks_scope_epoch_and_age() -> None:
    clock = Clock()
    tags = TagCache(trust_seconds=2.0, max_entries=2, clock=clock)
    mine = Scope("jobs.read", uuid.uuid4())
    with tags.reading("a") as read:
        tags.put(read, mine, "t", epoch=7, final=True)
    assert tags.get("a", mine, 7) is None  # nothing kept before the subscription is confirmed
    tags.subscribed()
    for item in ("a", "b", "c"):
        with tags.reading(item) as read:
            tags.put(read, mine, f"t{item}", epoch=7, final=False)
    assert tags.get("a", mine, 7) is None and len(tags) == 2  # the oldest read went first
    hit = tags.get("b", mine, 7)
    assert hit is not None and hit.tag == "tb"
    assert tags.get("b", Scope("jobs.read", uuid.uuid4()), 7) is None
    assert tags.get("b", Scope("batches.read", mine.tenant_id), 7) is None
    assert tags.get("c", mine, 8) is None  # another URL epoch: gone
    clock.now += 2.0
    assert tags.get("b", mine, 7) is None
    with tags.reading("d") as read:
        tags.invalidate("d")
        tags.put(read, mine, "td", epoch=7, final=False)
    assert tags.get("d", mine, 7) is None
    with tags.reading("e") as read:
        tags.unsubscribed()
        tags.subscribed()
        tags.put(read, mine, "te", epoch=7, final=False)
    assert tags.get("e", mine, 7) is None  # the subscription dropped during the read
