"""Webhooks: the contract receivers verify, the target URL check (SSRF), and the outbox that records events.

Contract (Standard Webhooks): a POST with a JSON body `{"type": "job.completed", "timestamp": ISO-8601,
"data": {...}}` and the headers `webhook-id` (the same on every retry: receivers deduplicate on it),
`webhook-timestamp` (unix seconds of this attempt) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"id.timestamp.body">` with the tenant's secret; for a day after a rotation the previous secret signs too,
space-separated). Receivers verify with `standardwebhooks.Webhook(secret).verify(body, headers)`.

Outbox: an event is a `webhook_deliveries` row inserted in the transaction that changes the job, so a
committed transition always has its event and a rolled-back one never does. The Celery message that
delivers it is sent after the commit (a session event, below); the webhook worker's dispatcher sends again
whatever was not picked up, and emits the `completed` events of transitions made without these hooks
(the sweeper's). No HTTP here: a receiver that is down or slow costs the worker one Redis push.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from sqlalchemy import event as sa_event
from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from shared.models import TERMINAL_STATUSES, Batch, Job, JobStatus, Tenant, WebhookDelivery, utcnow
from shared.settings import Settings

log = logging.getLogger("genq.webhooks")

EVENTS = ("started", "progress", "completed")
DEFAULT_EVENTS = ("started", "completed")
PROGRESS_MIN_INTERVAL = 1.0  # seconds between two progress events of one job
MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"
ROTATION_GRACE = dt.timedelta(days=1)  # the previous secret keeps signing this long after a rotation

# ---------------------------------------------------------------------------------------------------
# Target URLs


class WebhookUrlError(ValueError):
    """The URL is not an acceptable webhook target; the message says why."""


def _address_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is refused ('loopback', 'private', ...), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-public"


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (a literal IP resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookUrlError(f"host {host!r} does not resolve ({exc})") from None
    return sorted({str(info[4][0]).split("%", 1)[0] for info in infos})


def check_url(url: str, settings: Settings, resolver: Callable[[str, int], list[str]] = resolve) -> None:
    """Refuse a target genq must not post to: not https (unless allowed), credentials in the URL, or a
    host resolving to a loopback, private, link-local or otherwise non-public address (server-side request
    forgery into the operator's network) unless `webhook_allow_private`. Checked at submission and again
    before every attempt (DNS may change between the two)."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlError(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlError(f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise WebhookUrlError("must be an absolute https:// URL")
    if scheme == "http" and not settings.webhook_allow_http:
        raise WebhookUrlError("must use https (plain http is allowed only with GENQ_WEBHOOK_ALLOW_HTTP)")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlError("must not carry credentials")
    if settings.webhook_allow_private:
        return
    port = port or (443 if scheme == "https" else 80)
    for address in resolver(parts.hostname, port):
        kind = _address_kind(ipaddress.ip_address(address))
        if kind is not None:
            raise WebhookUrlError(
                f"{parts.hostname} resolves to {address} ({kind} address): refused, genq does not post "
                "into its own network"
            )


def parse_events(events: Sequence[str] | None) -> str:
    """The events to store for a subscription, in canonical order ('started,completed')."""
    chosen = set(events) if events else set(DEFAULT_EVENTS)
    return ",".join(e for e in EVENTS if e in chosen)


def _subscribed(events: str | None, event: str) -> bool:
    return event in (events or "").split(",")


# ---------------------------------------------------------------------------------------------------
# Secrets and signatures


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def rotate_secret(session: Session, tenant: Tenant, now: dt.datetime | None = None) -> str:
    """Give the tenant a new secret (returned, to be shown once); the old one signs for ROTATION_GRACE."""
    now = now or utcnow()
    tenant.webhook_secret_previous = tenant.webhook_secret
    tenant.webhook_secret_rotated_at = now if tenant.webhook_secret else None
    tenant.webhook_secret = new_secret()
    session.flush()
    return tenant.webhook_secret


def signing_secrets(tenant: Tenant, now: dt.datetime | None = None) -> list[str]:
    """The secrets that sign a delivery now: the current one, and the previous within its grace."""
    found = [tenant.webhook_secret] if tenant.webhook_secret else []
    rotated = tenant.webhook_secret_rotated_at
    if tenant.webhook_secret_previous and rotated and (now or utcnow()) - rotated < ROTATION_GRACE:
        found.append(tenant.webhook_secret_previous)
    return found


def signed_headers(
    delivery_id: str, body: str, secrets_: Sequence[str], now: dt.datetime | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt (signatures by the `standardwebhooks` package)."""
    now = now or utcnow()
    signatures = [Webhook(secret).sign(delivery_id, now, body) for secret in secrets_]
    return {
        "content-type": "application/json",
        "user-agent": "genq-webhooks/1",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


# ---------------------------------------------------------------------------------------------------
# Payloads


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_data(job: Job, progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a job event carries: enough to act on without a GET (the GET has artifacts and URLs)."""
    error = None
    if job.error_code is not None or job.error_message is not None:
        error = {"code": job.error_code or "error", "message": job.error_message or ""}
    return {
        "id": str(job.id),
        "kind": job.kind.value,
        "status": job.status.value,
        "batch_id": str(job.batch_id) if job.batch_id else None,
        "attempts": job.attempts,
        "progress": progress if progress is not None else job.progress,
        "result": job.result,
        "error": error,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def batch_counts(session: Session, batch_id: uuid.UUID) -> dict[str, int]:
    query = select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
    found = {status.value: count for status, count in session.execute(query)}
    return {status.value: int(found.get(status.value, 0)) for status in JobStatus}


def batch_data(batch: Batch, counts: dict[str, int]) -> dict[str, Any]:
    finished = sum(counts[s.value] for s in TERMINAL_STATUSES)
    return {
        "id": str(batch.id),
        "total": batch.total,
        "counts": counts,
        "finished": finished,
        "done": finished >= batch.total,
        "canceled": batch.canceled_at is not None,
        "created_at": _iso(batch.created_at),
    }


def event_body(event: str, data: dict[str, Any], now: dt.datetime) -> str:
    """The JSON that is signed and sent, fixed when the event is recorded (every retry sends these bytes)."""
    document = {"type": event, "timestamp": now.isoformat(), "data": data}
    return json.dumps(document, separators=(",", ":"), default=str)


# ---------------------------------------------------------------------------------------------------
# The outbox: recording events in the caller's transaction


@dataclass(frozen=True)
class _Target:
    tenant_id: uuid.UUID
    url: str | None
    events: str | None
    batch_id: uuid.UUID | None


PENDING_KEY = "genq.webhooks.pending"
PUBLISHER_KEY = "genq.webhooks.publisher"
_TARGETS_KEPT = 4096
_targets: OrderedDict[uuid.UUID, _Target] = OrderedDict()  # a job's webhook never changes: cached
_last_progress: dict[uuid.UUID, float] = {}
_cache_lock = threading.Lock()


def _target(session: Session, job_id: uuid.UUID) -> _Target | None:
    with _cache_lock:
        cached = _targets.get(job_id)
    if cached is not None:
        return cached
    row = session.execute(
        select(Job.tenant_id, Job.webhook_url, Job.webhook_events, Job.batch_id).where(Job.id == job_id)
    ).first()
    if row is None:
        return None
    target = _Target(row.tenant_id, row.webhook_url, row.webhook_events, row.batch_id)
    with _cache_lock:
        _targets[job_id] = target
        while len(_targets) > _TARGETS_KEPT:
            dropped, _ = _targets.popitem(last=False)
            _last_progress.pop(dropped, None)
    return target


def _insert(session: Session, values: dict[str, Any]) -> uuid.UUID | None:
    """Insert a delivery unless its (subject, dedup) exists; its id is published after the commit."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement: Any = pg_insert(WebhookDelivery).on_conflict_do_nothing(
            index_elements=["subject_id", "dedup"]
        )
    elif dialect == "sqlite":
        statement = sqlite_insert(WebhookDelivery).on_conflict_do_nothing(
            index_elements=["subject_id", "dedup"]
        )
    else:  # pragma: no cover - genq runs on Postgres and SQLite
        statement = insert(WebhookDelivery)
    inserted = session.execute(statement.values(**values).returning(WebhookDelivery.id)).first()
    if inserted is None:
        return None
    session.info.setdefault(PENDING_KEY, []).append(inserted.id)
    return inserted.id


def _record(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    url: str,
    event: str,
    data: dict[str, Any],
    job_id: uuid.UUID | None = None,
    batch_id: uuid.UUID | None = None,
    dedup: str | None = None,
) -> uuid.UUID | None:
    now = utcnow()
    subject = job_id or batch_id
    assert subject is not None
    return _insert(
        session,
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "job_id": job_id,
            "batch_id": batch_id,
            "subject_id": subject,
            "dedup": dedup,
            "event": event,
            "url": url,
            "body": event_body(event, data, now),
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "retry_from": now,
            "created_at": now,
        },
    )


def record_job_event(
    session: Session, job_id: uuid.UUID, event: str, progress: dict[str, Any] | None = None
) -> None:
    """Record `event` ('started', 'progress' or 'completed') of a job that just made that transition in
    this session's transaction, and the batch events it implies. A no-op for jobs without a webhook
    (one small SELECT). `started` and `completed` are recorded once per job however often this runs;
    `progress` at most once per PROGRESS_MIN_INTERVAL per job (the job runs in one process at a time)."""
    target = _target(session, job_id)
    if target is None or (target.url is None and target.batch_id is None):
        return
    if target.url is not None and _subscribed(target.events, event):
        if event == "progress":
            if _progress_due(job_id):
                job = session.get(Job, job_id)
                if job is not None:
                    _record(
                        session, tenant_id=target.tenant_id, url=target.url, event="job.progress",
                        data=job_data(job, progress), job_id=job_id,
                    )  # fmt: skip
        else:
            job = session.get(Job, job_id, populate_existing=True)
            final = job is not None and job.status in TERMINAL_STATUSES
            if job is not None and (final if event == "completed" else job.status != JobStatus.queued):
                _record(
                    session, tenant_id=target.tenant_id, url=target.url, event=f"job.{event}",
                    data=job_data(job), job_id=job_id, dedup=event,
                )  # fmt: skip
    if target.batch_id is not None and event != "progress":
        record_batch_event(session, target.batch_id, event)


def _progress_due(job_id: uuid.UUID) -> bool:
    now = time.monotonic()
    with _cache_lock:
        if now - _last_progress.get(job_id, -PROGRESS_MIN_INTERVAL) < PROGRESS_MIN_INTERVAL:
            return False
        _last_progress[job_id] = now
        return True


def _unfinished(session: Session, batch_id: uuid.UUID) -> bool:
    pending = (JobStatus.queued, JobStatus.running, JobStatus.canceling)
    query = select(Job.id).where(Job.batch_id == batch_id, Job.status.in_(pending)).limit(1)
    return session.execute(query).first() is not None


def record_batch_event(session: Session, batch_id: uuid.UUID, event: str) -> None:
    """A batch's events, from one of its items: `started` with the first item that starts, `progress`
    (counts) when an item finishes, at most once per clock second across all workers, and `completed`
    once every item is final. Writes only webhook rows (never the batch row, which a cancel locks)."""
    batch = session.get(Batch, batch_id)
    if batch is None or batch.webhook_url is None:
        return
    if event == "started" and _subscribed(batch.webhook_events, "started"):
        _record(
            session, tenant_id=batch.tenant_id, url=batch.webhook_url, event="batch.started",
            data=batch_data(batch, batch_counts(session, batch_id)), batch_id=batch_id, dedup="started",
        )  # fmt: skip
    elif event == "completed":
        if not _unfinished(session, batch_id):
            if _subscribed(batch.webhook_events, "completed"):
                _record(
                    session, tenant_id=batch.tenant_id, url=batch.webhook_url, event="batch.completed",
                    data=batch_data(batch, batch_counts(session, batch_id)), batch_id=batch_id,
                    dedup="completed",
                )  # fmt: skip
        elif _subscribed(batch.webhook_events, "progress"):
            _record(
                session, tenant_id=batch.tenant_id, url=batch.webhook_url, event="batch.progress",
                data=batch_data(batch, batch_counts(session, batch_id)), batch_id=batch_id,
                dedup=f"progress@{int(time.time())}",
            )  # fmt: skip


P = ParamSpec("P")
R = TypeVar("R")


def emits(event: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a job transition `f(session, job_id_or_lease, ...)`: when it reports success (a truthy
    result), the job's `event` is recorded in the same transaction. For `progress` the third argument is
    the progress document. A failure to build an event is logged, never raised into the transition."""

    def decorate(transition: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(transition)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            result = transition(*args, **kwargs)
            if result:
                session, subject = args[0], args[1]
                job_id = getattr(subject, "job_id", subject)
                progress = args[2] if event == "progress" and len(args) > 2 else None
                try:
                    record_job_event(session, job_id, event, progress)  # type: ignore[arg-type]
                except SQLAlchemyError:
                    raise  # the transaction is broken: the transition fails with it, as it would anyway
                except Exception:
                    log.exception("webhook %s event of job %s not recorded", event, job_id)
            return result

        return wrapper

    return decorate


# ---------------------------------------------------------------------------------------------------
# Publishing after the commit

Publisher = Callable[[Sequence[uuid.UUID]], None]


class DeliveryPublisher:
    """Sends delivery ids to the webhook queue by task name. Never raises and never waits on a broker
    that is down (no publish retries): what is not sent, the dispatcher sends later."""

    def __init__(self, celery: Any, settings: Settings) -> None:
        self.celery = celery
        self.queue = settings.webhook_queue

    def __call__(self, delivery_ids: Sequence[uuid.UUID]) -> None:
        from shared.queue import WEBHOOK_TASK

        try:
            with self.celery.producer_or_acquire() as producer:
                # One connection try: kombu's default retries would hold a cancel for seconds.
                producer.connection.ensure_connection(max_retries=0)
                for delivery_id in delivery_ids:
                    self.celery.send_task(
                        WEBHOOK_TASK, args=[str(delivery_id)], queue=self.queue, producer=producer,
                        retry=False,
                    )  # fmt: skip
        except Exception as exc:
            log.warning(
                "%d webhook deliveries not sent now (the dispatcher will): %s", len(delivery_ids), exc
            )


_default_publisher: DeliveryPublisher | None = None


def default_publisher() -> DeliveryPublisher:
    """For processes that never named one (workers): a Celery app on this process's settings."""
    global _default_publisher
    if _default_publisher is None:
        from shared.queue import make_celery
        from shared.settings import get_settings

        settings = get_settings()
        _default_publisher = DeliveryPublisher(make_celery(settings, name="genq-webhook-outbox"), settings)
    return _default_publisher


def use_publisher(session: Session, publisher: Publisher) -> None:
    """Send this session's committed deliveries with `publisher` (the API passes its own broker)."""
    session.info[PUBLISHER_KEY] = publisher


@sa_event.listens_for(Session, "after_commit")
def _publish_after_commit(session: Session) -> None:
    delivery_ids = session.info.pop(PENDING_KEY, None)
    if delivery_ids:
        publisher = session.info.get(PUBLISHER_KEY) or default_publisher()
        publisher(delivery_ids)


@sa_event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(PENDING_KEY, None)
