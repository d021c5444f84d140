"""The webhook worker: posts recorded events to their receivers, on its own queue and in its own process.

    python -m worker.webhooks     # = celery -A worker.webhooks worker --pool threads -c 8

Why a process of its own rather than a task on the GPU workers: a delivery is a wait on someone else's
server (up to `webhook_timeout_seconds`, retried for hours), and a GPU worker runs one task at a time, so a
slow or dead receiver would hold a GPU idle. Here a pool of threads waits instead, in a process that never
imports torch; the GPU workers only insert a row and push a message (shared/webhooks.py).

Each message carries a delivery id. An attempt claims the delivery with a compare-and-set on its
`next_attempt_at` (a duplicate message finds it held or done and does nothing), posts the stored body
signed for this attempt, logs the attempt (status code, latency, error) and either finishes the delivery
or schedules the next attempt with exponential backoff, until `webhook_retry_window_seconds` have passed.
Retries are scheduled in SQL, not as Celery countdowns: the dispatcher thread sends each one when it is
due, sends again a message that was lost, and records `completed` events that no hook recorded.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests
from celery import Celery, bootsteps
from kombu import Exchange, Queue
from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db import session_factory
from shared.models import (
    TERMINAL_STATUSES,
    Batch,
    Job,
    JobStatus,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    utcnow,
)
from shared.queue import WEBHOOK_TASK, make_celery
from shared.settings import Settings, get_settings
from shared.webhooks import (
    DeliveryPublisher,
    WebhookUrlError,
    check_url,
    record_batch_event,
    record_job_event,
    signed_headers,
    signing_secrets,
    use_publisher,
)

log = logging.getLogger("genq.webhooks")

HOLD_MARGIN_SECONDS = 30.0  # an attempt holds its delivery for twice the HTTP timeout plus this
FIRST_SEND_GRACE = dt.timedelta(seconds=5)  # the committer publishes a new delivery itself
STALE_PUBLISH = dt.timedelta(minutes=10)  # a message not consumed by then is taken as lost
RECONCILE_SECONDS = 5.0
RECONCILE_JOBS_WINDOW = dt.timedelta(hours=1)
RECONCILE_BATCHES_WINDOW = dt.timedelta(days=7)
DISPATCH_LIMIT = 500
CONCURRENCY = 8


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    url: str
    body: str
    number: int  # this attempt's number, 1-based
    retry_from: dt.datetime
    secrets: list[str]


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    latency_ms: float
    error: str | None
    final: bool = False  # no retry however early (a refused target)

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def backoff_seconds(attempt: int, settings: Settings, jitter: float | None = None) -> float:
    """base, 2*base, 4*base, ... capped at max_interval, times a random 0.75-1 so receivers coming back
    after an outage are not hit by every delivery at once."""
    delay = min(
        settings.webhook_retry_base_seconds * 2 ** (attempt - 1), settings.webhook_retry_max_interval_seconds
    )
    return delay * (0.75 + 0.25 * (random.random() if jitter is None else jitter))


def claim(session: Session, delivery_id: uuid.UUID, settings: Settings, now: dt.datetime) -> Claimed | None:
    """Take a due, pending delivery for one attempt; None when it is not due (held, done, unknown)."""
    hold = dt.timedelta(seconds=2 * settings.webhook_timeout_seconds + HOLD_MARGIN_SECONDS)
    row = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=now + hold, attempts=WebhookDelivery.attempts + 1)
        .returning(
            WebhookDelivery.tenant_id,
            WebhookDelivery.url,
            WebhookDelivery.body,
            WebhookDelivery.attempts,
            WebhookDelivery.retry_from,
        )
    ).first()
    if row is None:
        return None
    tenant = session.get(Tenant, row.tenant_id)
    secrets = signing_secrets(tenant, now) if tenant is not None else []
    return Claimed(delivery_id, row.url, row.body, row.attempts, row.retry_from, secrets)


def post(claimed: Claimed, settings: Settings) -> Outcome:
    """One signed POST. Redirects are not followed (they could lead into the operator's network) and
    count as failures; the response body is never read."""
    try:
        check_url(claimed.url, settings)  # again: DNS may have changed since the submission
    except WebhookUrlError as exc:
        return Outcome(None, 0.0, f"refused: {exc}"[:500], final=True)
    if not claimed.secrets:
        return Outcome(None, 0.0, "the tenant has no webhook secret", final=True)
    headers = signed_headers(str(claimed.id), claimed.body, claimed.secrets)
    timeout = settings.webhook_timeout_seconds
    started = time.perf_counter()
    try:
        with requests.post(
            claimed.url,
            data=claimed.body.encode(),
            headers=headers,
            timeout=(min(5.0, timeout), timeout),
            allow_redirects=False,
            stream=True,
        ) as response:
            code = response.status_code
    except requests.RequestException as exc:
        latency = (time.perf_counter() - started) * 1000
        return Outcome(None, latency, f"{type(exc).__name__}: {exc}"[:500])
    latency = (time.perf_counter() - started) * 1000
    return Outcome(code, latency, None if 200 <= code < 300 else f"HTTP {code}")


def record(
    session: Session, claimed: Claimed, outcome: Outcome, settings: Settings, started: dt.datetime
) -> str:
    """Log the attempt and settle the delivery: 'succeeded', 'failed' (for good) or 'pending' (retry).
    Fenced on the attempt number: an attempt that outlived its hold does not overwrite a later one."""
    now = utcnow()
    session.add(
        WebhookAttempt(
            id=uuid.uuid4(), delivery_id=claimed.id, number=claimed.number, started_at=started,
            status_code=outcome.status_code, latency_ms=round(outcome.latency_ms, 2), error=outcome.error,
        )
    )  # fmt: skip
    values: dict[str, Any] = {"last_status_code": outcome.status_code, "last_error": outcome.error}
    if outcome.ok:
        values.update(status="succeeded", delivered_at=now, next_attempt_at=None)
    else:
        retry_at = now + dt.timedelta(seconds=backoff_seconds(claimed.number, settings))
        window_end = claimed.retry_from + dt.timedelta(seconds=settings.webhook_retry_window_seconds)
        if outcome.final or retry_at > window_end:
            values.update(status="failed", next_attempt_at=None)
        else:
            values.update(status="pending", next_attempt_at=retry_at, published_at=None)
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == claimed.id, WebhookDelivery.attempts == claimed.number)
        .values(**values)
    )
    return values["status"]


def deliver_once(delivery_id: uuid.UUID, settings: Settings, sessions: sessionmaker[Session]) -> str | None:
    """One attempt of one delivery, if it is due: the task's body. Returns the delivery's state after it."""
    started = utcnow()
    with sessions.begin() as session:
        claimed = claim(session, delivery_id, settings, started)
    if claimed is None:
        return None
    outcome = post(claimed, settings)
    with sessions.begin() as session:
        state = record(session, claimed, outcome, settings, started)
    log.info(
        "webhook %s attempt %d: %s in %.0f ms -> %s",
        delivery_id, claimed.number, outcome.status_code or outcome.error, outcome.latency_ms, state,
    )  # fmt: skip
    return state


# ---------------------------------------------------------------------------------------------------
# The dispatcher: due retries, lost messages, missed events


def publish_due(session: Session, now: dt.datetime, limit: int = DISPATCH_LIMIT) -> list[uuid.UUID]:
    """Mark the deliveries that need a message now and return their ids (the caller sends them after the
    commit): retries that came due, new deliveries whose committer's message did not arrive within a
    grace, and messages unconsumed for so long they are taken as lost. A compare-and-set: of several
    dispatchers, one sends each."""
    due = and_(
        WebhookDelivery.status == "pending",
        WebhookDelivery.next_attempt_at <= now,
        or_(
            and_(
                WebhookDelivery.published_at.is_(None),
                or_(WebhookDelivery.attempts > 0, WebhookDelivery.created_at < now - FIRST_SEND_GRACE),
            ),
            WebhookDelivery.published_at < now - STALE_PUBLISH,
        ),
    )
    ids = list(
        session.scalars(
            select(WebhookDelivery.id).where(due).order_by(WebhookDelivery.next_attempt_at).limit(limit)
        )
    )
    if not ids:
        return []
    marked = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids), due)
        .values(published_at=now)
        .returning(WebhookDelivery.id)
    )
    return [row.id for row in marked]


def emit_missed(session: Session, now: dt.datetime, limit: int = 200) -> int:
    """Record the `completed` events no hook recorded: jobs settled by the sweeper (expired leases), and
    batches whose last items finished at the same moment on two workers (each saw the other unfinished).
    Recent ones only; the (subject, 'completed') key keeps every event single."""
    done = WebhookDelivery.dedup == "completed"
    jobs = session.scalars(
        select(Job.id)
        .where(
            Job.webhook_url.is_not(None),
            Job.finished_at >= now - RECONCILE_JOBS_WINDOW,
            Job.status.in_(TERMINAL_STATUSES),
            Job.webhook_events.contains("completed"),
            ~exists().where(WebhookDelivery.subject_id == Job.id, done),
        )
        .limit(limit)
    ).all()
    for job_id in jobs:
        record_job_event(session, job_id, "completed")
    unfinished = (JobStatus.queued, JobStatus.running, JobStatus.canceling)
    batches = session.scalars(
        select(Batch.id)
        .where(
            Batch.webhook_url.is_not(None),
            Batch.created_at >= now - RECONCILE_BATCHES_WINDOW,
            Batch.webhook_events.contains("completed"),
            ~exists().where(WebhookDelivery.subject_id == Batch.id, done),
            ~exists().where(Job.batch_id == Batch.id, Job.status.in_(unfinished)),
        )
        .limit(limit)
    ).all()
    for batch_id in batches:
        record_batch_event(session, batch_id, "completed")
    return len(jobs) + len(batches)


class Dispatcher:
    """Runs `publish_due` every `webhook_poll_seconds` and `emit_missed` every few seconds, in a thread."""

    def __init__(self, settings: Settings, celery: Celery) -> None:
        self.settings = settings
        self.publisher = DeliveryPublisher(celery, settings)
        self.sessions = session_factory(settings.sql_url)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="genq-webhook-dispatcher", daemon=True)
        self._last_reconcile = 0.0

    def once(self, reconcile: bool = True) -> int:
        now = utcnow()
        with self.sessions() as session:
            use_publisher(session, self.publisher)  # missed events are sent after their commit
            if reconcile:
                with session.begin():
                    emit_missed(session, now)
            with session.begin():
                ids = publish_due(session, now)
        if ids:
            self.publisher(ids)
        return len(ids)

    def start(self) -> Dispatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stopped.wait(self.settings.webhook_poll_seconds):
            try:
                reconcile = time.monotonic() - self._last_reconcile >= RECONCILE_SECONDS
                if reconcile:
                    self._last_reconcile = time.monotonic()
                self.once(reconcile)
            except Exception:
                log.exception("webhook dispatch failed; retrying")


# ---------------------------------------------------------------------------------------------------
# The Celery app of this process

settings = get_settings()
app: Celery = make_celery(settings, name="genq-webhooks")
queue = settings.webhook_queue
app.conf.update(
    task_queues=[Queue(queue, Exchange(queue), routing_key=queue)],
    task_default_queue=queue,
    worker_pool="threads",
    worker_concurrency=CONCURRENCY,
    worker_prefetch_multiplier=1,
    worker_send_task_events=False,
)
_sessions = session_factory(settings.sql_url)


@app.task(name=WEBHOOK_TASK)
def deliver(delivery_id: str) -> None:
    try:
        parsed = uuid.UUID(delivery_id)
    except ValueError:
        log.error("webhook message with a malformed delivery id %r dropped", delivery_id)
        return
    deliver_once(parsed, settings, _sessions)


class DispatcherStep(bootsteps.StartStopStep):
    """The dispatcher thread, in the webhook worker."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.dispatcher: Dispatcher | None = None

    def start(self, parent: Any) -> None:
        self.dispatcher = Dispatcher(settings, app).start()

    def stop(self, parent: Any) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None


app.steps["worker"].add(DispatcherStep)


def worker_argv(hostname: str = "webhooks@%h", loglevel: str = "INFO") -> list[str]:
    """The command line of a webhook worker: threads (deliveries wait on the network, not the CPU); the
    queue is this process's settings.webhook_queue (the app's task_queues), so no -Q."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.webhooks", "worker",
        "--pool", "threads", "--concurrency", str(CONCURRENCY), "--hostname", hostname,
        "--loglevel", loglevel, "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


if __name__ == "__main__":
    # The same command line as every deployment's: this module as `-A`, not as __main__ (one app, one
    # set of tasks).
    os.execv(sys.executable, worker_argv())
