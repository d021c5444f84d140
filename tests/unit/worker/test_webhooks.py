"""worker/webhooks.py on SQLite against a real HTTP receiver: one attempt per due delivery, every attempt
logged, backoff scheduled in SQL, retries stopped by the window, refused targets never contacted, and the
dispatcher's sends and missed events."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from shared.models import Job, JobStatus, Tenant, WebhookAttempt, WebhookDelivery, utcnow
from shared.settings import Settings
from shared.webhooks import new_secret, use_publisher
from tests.receiver import running
from worker.webhooks import backoff_seconds, deliver_once, emit_missed, publish_due

SETTINGS = Settings(
    environment="test",
    webhook_allow_http=True,
    webhook_allow_private=True,
    webhook_timeout_seconds=5,
    webhook_retry_base_seconds=2,
    webhook_retry_window_seconds=60,
)


@pytest.fixture()
def secret(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> str:
    value = new_secret()
    with sessions.begin() as session:
        session.get(Tenant, tenant_id).webhook_secret = value  # type: ignore[union-attr]
    return value


def add_delivery(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, url: str, **values: object
) -> uuid.UUID:
    now = utcnow()
    defaults: dict[str, object] = {
        "status": "pending", "attempts": 0, "next_attempt_at": now, "retry_from": now, "created_at": now,
    }  # fmt: skip
    delivery = WebhookDelivery(
        id=uuid.uuid4(), tenant_id=tenant_id, subject_id=uuid.uuid4(), event="job.completed", url=url,
        body=json.dumps({"type": "job.completed", "data": {"n": 1}}), **{**defaults, **values},
    )  # fmt: skip
    with sessions.begin() as session:
        session.add(delivery)
    return delivery.id


def state(
    sessions: sessionmaker[Session], delivery_id: uuid.UUID
) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    with sessions() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        query = select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
        return delivery, list(session.scalars(query.order_by(WebhookAttempt.number)))


def make_due(sessions: sessionmaker[Session], delivery_id: uuid.UUID) -> None:
    with sessions.begin() as session:
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(next_attempt_at=utcnow())
        )


def test_a_delivery_is_posted_signed_and_logged(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, secret: str
) -> None:
    with running() as receiver:
        delivery_id = add_delivery(sessions, tenant_id, receiver.url)
        assert deliver_once(delivery_id, SETTINGS, sessions) == "succeeded"
        assert deliver_once(delivery_id, SETTINGS, sessions) is None  # a duplicate message: nothing
        (request,) = receiver.received
    assert request.headers["webhook-id"] == str(delivery_id)
    assert Webhook(secret).verify(request.body, request.headers) == {
        "type": "job.completed",
        "data": {"n": 1},
    }
    delivery, attempts = state(sessions, delivery_id)
    assert (
        delivery.status == "succeeded"
        and delivery.delivered_at is not None
        and delivery.next_attempt_at is None
    )
    assert [(a.number, a.status_code, a.error) for a in attempts] == [(1, 200, None)]
    assert attempts[0].latency_ms > 0


def test_failures_back_off_then_succeed_with_the_same_webhook_id(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, secret: str
) -> None:
    with running(statuses=[503, 500]) as receiver:
        delivery_id = add_delivery(sessions, tenant_id, receiver.url)
        for expected in ("pending", "pending", "succeeded"):
            before = utcnow()
            assert deliver_once(delivery_id, SETTINGS, sessions) == expected
            if expected == "pending":
                delivery, _ = state(sessions, delivery_id)
                assert delivery.next_attempt_at > before and delivery.published_at is None  # type: ignore[operator]
                assert deliver_once(delivery_id, SETTINGS, sessions) is None  # not due yet
                make_due(sessions, delivery_id)
        ids = {r.headers["webhook-id"] for r in receiver.received}
    assert ids == {str(delivery_id)} and len(receiver.received) == 3
    _, attempts = state(sessions, delivery_id)
    assert [(a.number, a.status_code, a.error) for a in attempts] == [
        (1, 503, "HTTP 503"),
        (2, 500, "HTTP 500"),
        (3, 200, None),
    ]


def test_backoff_doubles_up_to_the_cap() -> None:
    settings = Settings(
        environment="test", webhook_retry_base_seconds=5, webhook_retry_max_interval_seconds=60
    )
    assert [backoff_seconds(n, settings, jitter=1.0) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 40, 60]
    assert backoff_seconds(1, settings, jitter=0.0) == 3.75


def test_retries_stop_at_the_end_of_the_window(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, secret: str
) -> None:
    with running(statuses=[500]) as receiver:
        old = utcnow() - dt.timedelta(seconds=59)
        delivery_id = add_delivery(sessions, tenant_id, receiver.url, retry_from=old)
        assert deliver_once(delivery_id, SETTINGS, sessions) == "failed"
    delivery, attempts = state(sessions, delivery_id)
    assert delivery.status == "failed" and delivery.next_attempt_at is None and len(attempts) == 1


def test_a_target_now_resolving_to_a_private_address_is_not_contacted(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, secret: str
) -> None:
    strict = SETTINGS.model_copy(update={"webhook_allow_private": False})
    with running() as receiver:
        delivery_id = add_delivery(sessions, tenant_id, receiver.url)
        assert deliver_once(delivery_id, strict, sessions) == "failed"
        assert receiver.received == []
    _, attempts = state(sessions, delivery_id)
    assert attempts[0].status_code is None and "loopback address): refused" in (attempts[0].error or "")


def test_an_unreachable_receiver_is_logged_and_retried(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, secret: str
) -> None:
    with running() as receiver:
        url = receiver.url
    delivery_id = add_delivery(sessions, tenant_id, url)  # nothing listens there any more
    assert deliver_once(delivery_id, SETTINGS, sessions) == "pending"
    _, attempts = state(sessions, delivery_id)
    assert attempts[0].status_code is None and "ConnectionError" in (attempts[0].error or "")


def test_the_dispatcher_sends_due_retries_and_lost_messages_once(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID
) -> None:
    now = utcnow()
    fresh = add_delivery(sessions, tenant_id, "http://127.0.0.1:9/x")  # its committer just sent it
    lost = add_delivery(sessions, tenant_id, "http://127.0.0.1:9/x", created_at=now - dt.timedelta(minutes=1))
    retry = add_delivery(sessions, tenant_id, "http://127.0.0.1:9/x", attempts=1)
    later = add_delivery(
        sessions, tenant_id, "http://127.0.0.1:9/x", attempts=1, next_attempt_at=now + dt.timedelta(hours=1)
    )
    done = add_delivery(sessions, tenant_id, "http://127.0.0.1:9/x", status="succeeded", attempts=1)
    with sessions.begin() as session:
        sent = publish_due(session, utcnow())
    assert set(sent) == {lost, retry}
    with sessions.begin() as session:
        assert publish_due(session, utcnow()) == []  # marked: not sent twice
    assert {fresh, later, done}.isdisjoint(sent)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[uuid.UUID] = []

    def __call__(self, ids: Sequence[uuid.UUID]) -> None:
        self.sent.extend(ids)


def test_missed_completed_events_are_recorded_once(
    sessions: sessionmaker[Session],
    make_job,
    tenant_id: uuid.UUID,  # type: ignore[no-untyped-def]
) -> None:
    job_id = make_job(webhook_url="https://hooks.example.com/x", webhook_events="completed")
    with sessions.begin() as session:  # as the sweeper settles a job: no hook runs
        session.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.failed, finished_at=utcnow())
        )
    recorder = Recorder()
    for expected in (1, 0):
        with sessions() as session:
            use_publisher(session, recorder)
            with session.begin():
                assert emit_missed(session, utcnow()) == expected
    with sessions() as session:
        (delivery,) = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
    assert delivery.event == "job.completed" and recorder.sent == [delivery.id]
    assert json.loads(delivery.body)["data"]["status"] == "failed"
