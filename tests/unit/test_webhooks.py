"""shared/webhooks.py: target checks (SSRF), signatures a standard verifier accepts, and the outbox that
records each event once, in the transaction of the job's transition, published only after its commit."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook, WebhookVerificationError

from shared import job_state
from shared.db import dispose_engines, engine_for
from shared.models import Base, Batch, Job, JobStatus, Tenant, WebhookDelivery, utcnow
from shared.settings import Settings
from shared.specs import JobKind
from shared.webhooks import (
    WebhookUrlError,
    check_url,
    new_secret,
    parse_events,
    rotate_secret,
    signed_headers,
    signing_secrets,
    use_publisher,
)

STRICT = Settings(environment="test")
LENIENT = Settings(environment="test", webhook_allow_http=True, webhook_allow_private=True)


def resolver(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host, port: list(addresses)


def test_public_https_targets_pass() -> None:
    check_url("https://hooks.example.com/genq?x=1", STRICT, resolver("93.184.216.34", "2606:2800:220:1::1"))


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.5", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("fe80::1", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("224.0.0.1", "multicast"),
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    with pytest.raises(WebhookUrlError, match=rf"\({kind} address\): refused"):
        check_url("https://hooks.example.com/x", STRICT, resolver("93.184.216.34", address))
    check_url("https://hooks.example.com/x", LENIENT, resolver(address))  # allowed by the setting


def test_literal_addresses_are_resolved_by_the_system() -> None:
    with pytest.raises(WebhookUrlError, match="loopback"):
        check_url("https://127.0.0.1:8443/hook", STRICT)
    with pytest.raises(WebhookUrlError, match="loopback"):
        check_url("https://[::1]/hook", STRICT)
    with pytest.raises(WebhookUrlError, match="does not resolve"):
        check_url("https://no-such-host.invalid/hook", STRICT)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "https://"),
        ("example.com/hook", "https://"),
        ("https:///nohost", "https://"),
        ("http://example.com/x", "must use https"),
        ("https://user:pw@example.com/x", "credentials"),
        ("https://example.com:99999/x", "not a valid URL"),
        ("https://example.com/" + "a" * 2100, "longer than"),
    ],
)
def test_malformed_targets_are_refused(url: str, message: str) -> None:
    with pytest.raises(WebhookUrlError, match=message):
        check_url(url, STRICT, resolver("93.184.216.34"))


def test_plain_http_only_where_allowed() -> None:
    check_url("http://127.0.0.1:9/x", LENIENT)


def test_events_are_stored_in_canonical_order() -> None:
    assert parse_events(None) == "started,completed"
    assert parse_events(["completed", "progress", "completed"]) == "progress,completed"


def test_signatures_verify_with_the_standard_library_and_rotation_keeps_the_old_secret_a_day() -> None:
    tenant = Tenant(id=uuid.uuid4(), name="t", webhook_secret=new_secret())
    body = json.dumps({"type": "job.completed", "data": {"id": "x"}})

    class _Session:
        def flush(self) -> None:
            pass

    old = tenant.webhook_secret
    now = utcnow()
    new = rotate_secret(_Session(), tenant, now)  # type: ignore[arg-type]
    assert new != old and new.startswith("whsec_")
    headers = signed_headers("msg-1", body, signing_secrets(tenant, now))
    assert Webhook(old).verify(body, headers) == json.loads(body)  # a receiver not yet switched
    assert Webhook(new).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body.replace("x", "y"), headers)  # a tampered body
    later = now + dt.timedelta(days=2)
    assert signing_secrets(tenant, later) == [new]
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, signed_headers("msg-1", body, signing_secrets(tenant, later)))


# ---------------------------------------------------------------------------------------------------
# The outbox


class Recorder:
    def __init__(self) -> None:
        self.sent: list[uuid.UUID] = []

    def __call__(self, ids: Sequence[uuid.UUID]) -> None:
        self.sent.extend(ids)


@pytest.fixture()
def session(tmp_path: Path) -> Iterator[Session]:
    url = f"sqlite:///{tmp_path / 'genq.db'}"
    Base.metadata.create_all(engine_for(url))
    with Session(engine_for(url), expire_on_commit=False) as session:
        yield session
    dispose_engines(url)


@pytest.fixture()
def sent(session: Session) -> Recorder:
    recorder = Recorder()
    use_publisher(session, recorder)
    return recorder


@pytest.fixture()
def tenant(session: Session) -> Tenant:
    tenant = Tenant(id=uuid.uuid4(), name=f"t-{uuid.uuid4().hex[:6]}", webhook_secret=new_secret())
    session.add(tenant)
    session.commit()
    return tenant


def add_job(
    session: Session, tenant: Tenant, events: str | None = "started,progress,completed", **extra
) -> Job:  # type: ignore[no-untyped-def]
    job = Job(
        id=uuid.uuid4(), tenant_id=tenant.id, kind=JobKind.train, params={}, queue="q",
        webhook_url="https://hooks.example.com/x" if events else None, webhook_events=events, **extra,
    )  # fmt: skip
    session.add(job)
    session.commit()
    return job


def deliveries(session: Session, subject: uuid.UUID) -> list[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.subject_id == subject)
    return list(session.scalars(query.order_by(WebhookDelivery.created_at)))


def events(session: Session, subject: uuid.UUID) -> list[str]:
    return [d.event for d in deliveries(session, subject)]


def run_job(session: Session, job: Job, progress_writes: int = 0) -> None:
    claimed = job_state.claim_job(session, job.id, "w", 60)
    assert claimed is not None
    lease = job_state.lease_of(claimed)
    session.commit()
    for step in range(progress_writes):
        job_state.write_progress(session, lease, {"phase": "train", "step": step, "total": 10})
        session.commit()
    assert job_state.finish_succeeded(session, lease, {"metrics": {"accuracy": 0.9}})
    session.commit()


def test_a_job_records_started_throttled_progress_and_completed_each_published_after_commit(
    session: Session, tenant: Tenant, sent: Recorder
) -> None:
    job = add_job(session, tenant)
    run_job(session, job, progress_writes=3)  # three writes within a second: one progress event
    found = deliveries(session, job.id)
    assert [d.event for d in found] == ["job.started", "job.progress", "job.completed"]
    assert sent.sent == [d.id for d in found]
    body = json.loads(found[-1].body)
    assert body["type"] == "job.completed"
    assert body["data"]["status"] == "succeeded" and body["data"]["result"] == {"metrics": {"accuracy": 0.9}}
    assert json.loads(found[1].body)["data"]["progress"] == {"phase": "train", "step": 0, "total": 10}
    assert all(d.status == "pending" and d.tenant_id == tenant.id and d.job_id == job.id for d in found)


def test_only_subscribed_events_and_none_without_a_webhook(
    session: Session, tenant: Tenant, sent: Recorder
) -> None:
    only_completed = add_job(session, tenant, events="completed")
    run_job(session, only_completed, progress_writes=2)
    assert events(session, only_completed.id) == ["job.completed"]
    plain = add_job(session, tenant, events=None)
    run_job(session, plain, progress_writes=2)
    assert events(session, plain.id) == [] and len(sent.sent) == 1


def test_a_rolled_back_transition_records_and_publishes_nothing(
    session: Session, tenant: Tenant, sent: Recorder
) -> None:
    job = add_job(session, tenant)
    assert job_state.claim_job(session, job.id, "w", 60) is not None
    session.rollback()
    assert events(session, job.id) == [] and sent.sent == []
    run_job(session, job)  # the real run afterwards
    assert events(session, job.id) == ["job.started", "job.completed"]


def test_completed_is_recorded_once_however_often_it_is_asked(
    session: Session, tenant: Tenant, sent: Recorder
) -> None:
    from shared.webhooks import record_job_event

    job = add_job(session, tenant)
    run_job(session, job)
    for _ in range(2):
        record_job_event(session, job.id, "completed")
        session.commit()
    assert events(session, job.id) == ["job.started", "job.completed"]
    queued = add_job(session, tenant)
    record_job_event(session, queued.id, "completed")  # not final: nothing
    record_job_event(session, queued.id, "started")  # not started: nothing
    assert events(session, queued.id) == []


def test_a_failed_event_build_never_fails_the_transition(
    session: Session, tenant: Tenant, sent: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.webhooks as webhooks

    def broken(*_args: object, **_kwargs: object) -> str:
        raise TypeError("cannot serialise")

    monkeypatch.setattr(webhooks, "event_body", broken)
    job = add_job(session, tenant)
    run_job(session, job)
    assert session.get(Job, job.id).status == JobStatus.succeeded  # type: ignore[union-attr]
    assert events(session, job.id) == []


def test_a_batch_records_started_once_and_completed_when_every_item_is_final(
    session: Session, tenant: Tenant, sent: Recorder
) -> None:
    batch = Batch(
        id=uuid.uuid4(), tenant_id=tenant.id, total=3, webhook_url="https://hooks.example.com/b",
        webhook_events="started,progress,completed",
    )  # fmt: skip
    session.add(batch)
    session.commit()
    items = [add_job(session, tenant, events=None, batch_id=batch.id) for _ in range(3)]
    run_job(session, items[0])
    assert events(session, batch.id) == ["batch.started", "batch.progress"]
    job_state.request_cancel(session, items[2].id)  # queued -> canceled, as the API does
    session.commit()
    run_job(session, items[1])
    assert events(session, batch.id)[-1] == "batch.completed"
    assert events(session, batch.id).count("batch.started") == 1
    completed = json.loads(deliveries(session, batch.id)[-1].body)["data"]
    assert (
        completed["done"] and completed["counts"]["succeeded"] == 2 and completed["counts"]["canceled"] == 1
    )
    assert all(events(session, item.id) == [] for item in items)  # items have no webhook of their own
