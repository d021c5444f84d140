"""The scheduler: decides which held job each free worker slot gets, and sends it (worker/dispatch.py).

Runs as a thread in every worker's main process (see `worker.celery_app`), or alone:
`python -m worker.scheduler [--once]`. Only one is active at a time: the one holding a Redis lock
(`shared.scheduling.leader_key`) that it renews every third of `scheduler_lease_seconds`; the others
wait to take it over. Every thread also announces its worker's queues, which sizes the windows.

A pass, per queue: the window is the live workers times (1 + `dispatch_ahead_per_worker`); running jobs
and messages out fill it; each free slot goes to the best held job (`shared.scheduling.choose`). A pass
runs when woken (a submit, a finished job, the sweeper) and every `scheduler_tick_seconds`. No torch here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from redis.exceptions import LockError
from sqlalchemy import ColumnElement, Uuid, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.db import capped_count, session_factory
from shared.models import DISPATCHED, HELD, Job, JobStatus, Tenant, utcnow
from shared.queue import make_celery
from shared.scheduling import (
    Candidate,
    QueueSummary,
    TenantLoad,
    announce_worker,
    choose,
    decayed,
    describe,
    leader_key,
    live_workers,
    retire_worker,
    summary_key,
    wake_channel,
)
from shared.settings import Settings
from shared.specs import JobKind
from shared.usage import seconds_today
from worker.background import serve
from worker.dispatch import CeleryPublisher, JobMessage, Publisher, dispatch
from worker.metrics import scheduled, scheduler_active

log = logging.getLogger(__name__)

HELD_COUNT_CAP = 10_000  # held jobs counted per tenant for the summary; beyond it the count says "10,000+"
DURATION_SAMPLE = 20  # recently finished jobs per kind that the expected duration is the mean of
DURATION_REFRESH_SECONDS = 10.0
SUMMARY_TTL_SECONDS = 60
SUMMARY_EVERY_SECONDS = 1.0  # the held counts behind queue positions need not be fresher


def presence_ttl(settings: Settings) -> float:
    """How long a worker counts as live after it last announced itself."""
    return max(5.0, 3 * settings.scheduler_tick_seconds)


@dataclass(frozen=True)
class PassReport:
    dispatched: dict[str, int]  # queue -> messages sent


# The tenants with held jobs in a queue, one index probe each (a loose scan of ix_jobs_held): the
# scheduler's cost follows the tenants waiting, not the jobs queued or the tenants that exist.
TENANTS_WITH_HELD = text(
    """
    WITH RECURSIVE waiting(tenant_id) AS (
        SELECT (SELECT tenant_id FROM jobs WHERE status = 'queued' AND published_at IS NULL
                AND queue = :queue ORDER BY tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT j.tenant_id FROM jobs j WHERE j.status = 'queued' AND j.published_at IS NULL
                AND j.queue = :queue AND j.tenant_id > waiting.tenant_id ORDER BY j.tenant_id LIMIT 1)
        FROM waiting WHERE waiting.tenant_id IS NOT NULL
    )
    SELECT tenant_id FROM waiting WHERE tenant_id IS NOT NULL
    """
).columns(tenant_id=Uuid)


def tenants_with_held(session: Session, queue: str) -> list[uuid.UUID]:
    return list(session.scalars(TENANTS_WITH_HELD, {"queue": queue}))


class Scheduler:
    """One scheduler's connections and one pass over its queues."""

    def __init__(
        self, settings: Settings, app: Celery | None = None, publisher: Publisher | None = None
    ) -> None:
        self.settings = settings
        self.app = app or make_celery(settings)
        self.publisher = publisher or CeleryPublisher(self.app, settings)
        self.sessions: sessionmaker[Session] = session_factory(settings.sql_url)
        self.redis = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
        self.queues = (settings.train_queue, settings.sample_queue)
        self._expected: dict[str, float] = {}
        self._expected_at = 0.0
        self._summary_at: dict[str, float] = {}

    def run_pass(self) -> PassReport:
        """One pass: fill every queue's free slots, commit the marks with the reads, then send."""
        now, clock = utcnow(), time.time()
        with self.sessions() as session:
            if session.get_bind().dialect.name == "postgresql":
                # A generic plan (psycopg prepares a statement run 5 times) cannot see that a queue is
                # empty and may walk every queued row to find out: plan each query for its values.
                session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
            out = self._counts(session, DISPATCHED)
            running = session.execute(
                select(Job.queue, Job.tenant_id, Job.started_at).where(
                    Job.status.in_([JobStatus.running, JobStatus.canceling])
                )
            ).all()
            slots: dict[str, tuple[int, int, int, int]] = {}  # queue -> workers, window, out, free
            for queue in self.queues:
                workers = live_workers(self.redis, queue, clock, presence_ttl(self.settings))
                window = max(1, workers) * (1 + self.settings.dispatch_ahead_per_worker)
                queue_out = sum(n for (q, _), n in out.items() if q == queue)
                free = window - queue_out - sum(1 for r in running if r.queue == queue)
                slots[queue] = (workers, window, queue_out, free)
            summarize = {
                q for q in self.queues if clock - self._summary_at.get(q, 0.0) >= SUMMARY_EVERY_SECONDS
            }
            waiting = {
                queue: tenants_with_held(session, queue)
                for queue in self.queues
                if slots[queue][3] > 0 or queue in summarize
            }
            involved = (
                {t for ids in waiting.values() for t in ids}
                | {t for _, t in out}
                | {r.tenant_id for r in running}
            )
            tenants = self._tenants(session, now, involved, out, running)
            expected = self._expected_seconds(session)
            picks: list[Candidate] = []
            queue_of: dict[str, str] = {}
            for queue, held_by in waiting.items():
                workers, window, queue_out, free = slots[queue]
                contenders = [tenants[t] for t in held_by if t in tenants]
                if free > 0:
                    for tenant in contenders:
                        tenant.candidates = deque(self._heads(session, queue, tenant.tenant_id, free))
                    chosen = choose(free, contenders, expected)
                    queue_of.update((str(p.job_id), queue) for p in chosen)
                    picks += chosen
                if queue in summarize:
                    self._write_summary(session, queue, workers, window, queue_out, contenders, expected)
                    self._summary_at[queue] = clock
            messages = [JobMessage(str(p.job_id), JobKind(p.kind), p.priority, p.request_id) for p in picks]
            sent = dispatch(session, self.publisher, messages) if messages else []
        if picks:
            log.debug("dispatched: %s", describe(picks))
        by_queue: dict[str, int] = {}
        for job_id in sent:
            by_queue[queue_of[job_id]] = by_queue.get(queue_of[job_id], 0) + 1
        return PassReport(by_queue)

    # -- reads -------------------------------------------------------------------------------------

    def _tenants(
        self,
        session: Session,
        now: dt.datetime,
        ids: set[uuid.UUID],
        out: dict[tuple[str, uuid.UUID], int],
        running: Sequence[Any],
    ) -> dict[uuid.UUID, TenantLoad]:
        """The weight, limits and usage of the tenants with queued or running work: decayed past worker
        time plus its running jobs' time so far (a long job counts from the moment it starts)."""
        half_life = self.settings.fair_share_half_life_seconds
        rows = session.execute(select(Tenant).where(Tenant.id.in_(ids))).scalars().all() if ids else []
        tenants = {
            t.id: TenantLoad(
                tenant_id=t.id,
                weight=t.weight or 1.0,
                usage=decayed(t.share_seconds or 0.0, t.share_at, now, half_life),
                active=0,
                max_active=t.max_running_jobs,
            )
            for t in rows
        }
        running_seconds: dict[uuid.UUID, float] = {}
        for row in running:
            if row.tenant_id in tenants:
                tenants[row.tenant_id].active += 1
                seconds = max(0.0, (now - row.started_at).total_seconds()) if row.started_at else 0.0
                running_seconds[row.tenant_id] = running_seconds.get(row.tenant_id, 0.0) + seconds
        for (_queue, tenant_id), n in out.items():
            if tenant_id in tenants:
                tenants[tenant_id].active += n
        for tenant_id, seconds in running_seconds.items():
            tenants[tenant_id].usage += seconds
        quotas = {t.id: t.gpu_seconds_per_day for t in rows if t.gpu_seconds_per_day is not None}
        used = seconds_today(session, list(quotas), now)
        for tenant_id, quota in quotas.items():
            spent = used.get(tenant_id, 0.0) + running_seconds.get(tenant_id, 0.0)
            tenants[tenant_id].seconds_left_today = quota - spent
        return tenants

    @staticmethod
    def _counts(session: Session, where: ColumnElement[bool]) -> dict[tuple[str, uuid.UUID], int]:
        """Jobs matching `where`, per (queue, tenant)."""
        rows = session.execute(
            select(Job.queue, Job.tenant_id, func.count()).where(where).group_by(Job.queue, Job.tenant_id)
        )
        return {(row[0], row[1]): row[2] for row in rows}

    @staticmethod
    def _heads(session: Session, queue: str, tenant_id: uuid.UUID, limit: int) -> list[Candidate]:
        """The tenant's next held jobs in its own order (served by ix_jobs_held)."""
        rows = session.execute(
            select(Job.id, Job.kind, Job.priority, Job.order_key, Job.request_id)
            .where(HELD, Job.queue == queue, Job.tenant_id == tenant_id)
            .order_by(Job.order_key)
            .limit(limit)
        )
        return [
            Candidate(r.id, tenant_id, str(r.kind), r.priority, r.order_key or 0, r.request_id) for r in rows
        ]

    def _expected_seconds(self, session: Session) -> dict[str, float]:
        """Mean worker time of the last few succeeded jobs of each kind, refreshed every few seconds."""
        if time.monotonic() - self._expected_at < DURATION_REFRESH_SECONDS:
            return self._expected
        expected: dict[str, float] = {}
        for kind in JobKind:
            rows = session.execute(
                select(Job.started_at, Job.finished_at)
                .where(Job.kind == kind, Job.finished_at.is_not(None), Job.status == JobStatus.succeeded)
                .order_by(Job.finished_at.desc())
                .limit(DURATION_SAMPLE)
            ).all()
            spans = [(r.finished_at - r.started_at).total_seconds() for r in rows if r.started_at]
            if spans:
                expected[kind.value] = round(sum(spans) / len(spans), 3)
        self._expected, self._expected_at = expected, time.monotonic()
        return expected

    def _write_summary(
        self,
        session: Session,
        queue: str,
        workers: int,
        window: int,
        out: int,
        tenants: list[TenantLoad],
        expected: dict[str, float],
    ) -> None:
        held: dict[str, int] = {}
        for tenant_id in (t.tenant_id for t in tenants):
            waiting = select(Job.id).where(HELD, Job.queue == queue, Job.tenant_id == tenant_id)
            n = capped_count(session, waiting, HELD_COUNT_CAP)
            if n:
                held[str(tenant_id)] = n
        summary = QueueSummary(
            at=time.time(),
            workers=workers,
            window=window,
            dispatched=out,
            held=held,
            weights={str(t.tenant_id): t.weight for t in tenants if str(t.tenant_id) in held},
            waiting_for={str(t.tenant_id): t.waiting_for for t in tenants if t.waiting_for},
            expected_seconds=expected,
        )
        try:
            self.redis.set(summary_key(queue), summary.dumps(), ex=SUMMARY_TTL_SECONDS)
        except redis.RedisError as error:
            log.debug("schedule summary not written: %s", error)

    def close(self) -> None:
        self.redis.close()


class SchedulerThread:
    """Announces this worker's queues and, while it holds the scheduler lock, runs passes: on every
    wake and every tick. A pass that fails is logged and retried at the next wake or tick."""

    def __init__(
        self,
        settings: Settings,
        app: Celery | None = None,
        worker_name: str | None = None,
        queues: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings
        self.scheduler = Scheduler(settings, app)
        self.worker_name = worker_name  # None: schedule only (python -m worker.scheduler)
        self.worker_queues = list(queues or self.scheduler.queues)
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lock = self.scheduler.redis.lock(
            leader_key(self.scheduler.queues),
            timeout=settings.scheduler_lease_seconds,
            blocking=False,
            thread_local=False,
        )
        self.leading = False
        self._standing_aside_until = 0.0  # after a failed pass: leave the lock to healthier schedulers
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="genq-scheduler", daemon=True)

    def start(self) -> SchedulerThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)
        if self.leading:
            with contextlib.suppress(LockError, redis.RedisError):
                self.lock.release()
        if self.worker_name:
            with contextlib.suppress(redis.RedisError):
                retire_worker(self.scheduler.redis, self.worker_queues, self.worker_name)
        self.scheduler.close()

    def join(self) -> None:
        self._thread.join()

    def _loop(self) -> None:
        tick = self.settings.scheduler_tick_seconds
        renew_every = self.settings.scheduler_lease_seconds / 3
        pubsub = None
        last_renew = 0.0
        next_tick = 0.0
        while not self._stopped.is_set():
            try:
                if pubsub is None:
                    pubsub = self.scheduler.redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(*(wake_channel(q) for q in self.scheduler.queues))
                now = time.monotonic()
                woken = False
                if now >= next_tick:
                    self._announce()
                    woken, next_tick = True, now + tick
                if now - last_renew >= renew_every or not self.leading:
                    self._lead()
                    last_renew = now
                if self.leading and woken:
                    self._pass()
                message = pubsub.get_message(timeout=max(0.0, min(tick, next_tick - time.monotonic())))
                if message is not None:
                    while pubsub.get_message(timeout=0) is not None:  # one pass answers every wake so far
                        pass
                    if self.leading:
                        self._pass()
            except (redis.RedisError, OSError) as error:
                log.warning("scheduler: Redis did not answer (%s); retrying", error)
                self.leading = False
                scheduler_active(False)
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()
                pubsub = None
                self._stopped.wait(tick)
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()

    def _announce(self) -> None:
        if self.worker_name:
            announce_worker(
                self.scheduler.redis,
                self.worker_queues,
                self.worker_name,
                time.time(),
                presence_ttl(self.settings),
            )

    def _lead(self) -> None:
        """Take the lock, or keep it: renewing fails when it expired meanwhile and another took it. A
        scheduler whose last pass failed (its database does not answer) neither takes nor keeps it, so
        one that can still reach the database takes over within the lease."""
        if time.monotonic() < self._standing_aside_until:
            self._step_aside()
            return
        if self.leading:
            try:
                self.lock.extend(self.settings.scheduler_lease_seconds, replace_ttl=True)
                return
            except LockError:
                log.warning("scheduler %s: lost the scheduler lock", self.identity)
                self.leading = False
                scheduler_active(False)
        if self.lock.acquire(token=self.identity):
            self.leading = True
            scheduler_active(True)
            log.info("scheduler %s: now the active scheduler", self.identity)

    def _step_aside(self) -> None:
        if self.leading:
            self.leading = False
            scheduler_active(False)
            with contextlib.suppress(LockError):
                self.lock.release()
            log.warning("scheduler %s: stepped aside after a failed pass", self.identity)

    def _pass(self) -> None:
        started = time.perf_counter()
        try:
            report = self.scheduler.run_pass()
        except Exception:
            log.exception("scheduler pass failed; another scheduler may take over for a lease")
            self._standing_aside_until = time.monotonic() + self.settings.scheduler_lease_seconds
            self._step_aside()
            return
        scheduled(report.dispatched, time.perf_counter() - started)


def _once(settings: Settings) -> dict[str, Any]:
    """One pass without the lock (by hand: make sure no other scheduler runs)."""
    scheduler = Scheduler(settings)
    try:
        return scheduler.run_pass().dispatched
    finally:
        scheduler.close()


def main(argv: list[str] | None = None) -> None:
    serve(
        "python -m worker.scheduler",
        __doc__.splitlines()[0],
        _once,
        lambda settings: SchedulerThread(settings).start(),
        argv,
    )


if __name__ == "__main__":
    main()
