"""What decides which queued job runs next, shared by the scheduler (which dispatches) and the API (which
tells a tenant where its job stands).

Queued jobs wait in SQL. The scheduler (worker/scheduler.py) sends each queue only as many messages as
its live workers can start now, and fills every free slot with the best held job: highest priority
first, then the tenant furthest below its fair share of recent worker time (usage / weight), then the
oldest. Within one tenant the order is fixed at submission by `order_key`.

The scheduler publishes a small summary per queue in Redis (live workers, messages out, each tenant's
held work and what holds it back); the API reads it to estimate queue positions and start times without
counting the queue.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

log = logging.getLogger(__name__)

MAX_PRIORITY = 9
SEQ_BITS = 40  # 10^12 jobs per tenant before the order key's priority band overflows
WAKE_PREFIX = "genq:schedule:wake:"
SUMMARY_PREFIX = "genq:schedule:"
WORKERS_PREFIX = "genq:workers:"
DEFAULT_JOB_SECONDS = 1.0  # expected worker time of a kind with no finished job yet


def order_key(priority: int, seq: int) -> int:
    """A tenant's queued jobs run in ascending order of this: priority 9 before 0, then submission order."""
    return ((MAX_PRIORITY - priority) << SEQ_BITS) | seq


def band_start(priority: int) -> int:
    """The smallest order key of a priority."""
    return order_key(priority, 0)


def leader_key(queues: Sequence[str]) -> str:
    """The lock of the one active scheduler for these queues (deployments may share a Redis)."""
    return "genq:scheduler:" + ":".join(queues)


def wake_channel(queue: str) -> str:
    """Where a queue's scheduler is woken (pub/sub channels span Redis databases: one per queue keeps
    deployments sharing a Redis from waking each other)."""
    return f"{WAKE_PREFIX}{queue}"


def summary_key(queue: str) -> str:
    return f"{SUMMARY_PREFIX}{queue}"


def workers_key(queue: str) -> str:
    return f"{WORKERS_PREFIX}{queue}"


def decayed(seconds: float, since: dt.datetime | None, now: dt.datetime, half_life: float) -> float:
    """Worker time used, halved every `half_life` seconds since it was recorded."""
    if since is None or seconds <= 0:
        return max(0.0, seconds)
    age = max(0.0, (now - since).total_seconds())
    return seconds * 0.5 ** (age / half_life)


# ---------------------------------------------------------------------------------------------------
# Choosing


@dataclass(frozen=True)
class Candidate:
    """A held job the scheduler may dispatch."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    priority: int
    order_key: int
    request_id: str | None = None


@dataclass
class TenantLoad:
    """One tenant as the scheduler sees it in one pass."""

    tenant_id: uuid.UUID
    weight: float
    usage: float  # recent worker seconds (decayed) plus the running jobs' time so far
    active: int  # running jobs and messages out, in every queue
    max_active: int | None = None  # the tenant's max_running_jobs
    seconds_left_today: float | None = None  # gpu_seconds_per_day minus today's use; None: no quota
    candidates: deque[Candidate] = field(default_factory=deque)

    @property
    def waiting_for(self) -> str | None:
        """The tenant's own quota that holds its jobs back, if one does."""
        if self.seconds_left_today is not None and self.seconds_left_today <= 0:
            return "gpu_seconds_per_day"
        if self.max_active is not None and self.active >= self.max_active:
            return "max_running_jobs"
        return None

    def share(self) -> float:
        return self.usage / max(self.weight, 1e-9)


def choose(free: int, tenants: Sequence[TenantLoad], expected_seconds: dict[str, float]) -> list[Candidate]:
    """Fill `free` slots: each slot goes to the best head-of-line job among tenants not held by a quota —
    highest priority, then the tenant with the least usage per unit of weight, then the lowest order key.
    A chosen job's expected time is charged to its tenant at once, so one pass spreads its slots the way
    the finished jobs will."""
    picks: list[Candidate] = []
    while len(picks) < free:
        ready = [t for t in tenants if t.candidates and t.waiting_for is None]
        if not ready:
            break
        best = min(
            ready,
            key=lambda t: (-t.candidates[0].priority, t.share(), t.candidates[0].order_key, str(t.tenant_id)),
        )
        pick = best.candidates.popleft()
        picks.append(pick)
        best.active += 1
        best.usage += expected_seconds.get(pick.kind, DEFAULT_JOB_SECONDS)
    return picks


# ---------------------------------------------------------------------------------------------------
# The summary the scheduler leaves for the API


@dataclass
class QueueSummary:
    """One queue as the scheduler last saw it (JSON in Redis under `summary_key(queue)`)."""

    at: float  # unix time
    workers: int  # live workers consuming the queue
    window: int  # jobs that may be running or out as messages at once
    dispatched: int  # messages out, not yet started
    held: dict[str, int]  # tenant id -> held jobs (capped count)
    weights: dict[str, float]
    waiting_for: dict[str, str]  # tenant id -> the quota holding it back
    expected_seconds: dict[str, float]  # job kind -> recent mean worker time

    def dumps(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: bytes | str) -> QueueSummary:
        return cls(**json.loads(raw))


def read_summary(client: redis.Redis, queue: str) -> QueueSummary | None:
    """The queue's latest summary; None when there is none (no scheduler ran yet) or Redis is away."""
    try:
        raw = client.get(summary_key(queue))
        return QueueSummary.loads(raw) if raw else None
    except (redis.RedisError, ValueError, TypeError) as error:
        log.debug("no schedule summary for %s: %s", queue, error)
        return None


@dataclass(frozen=True)
class Standing:
    """Where a queued job stands: jobs expected to start before it, when it should start, what holds it."""

    position: int
    eta_seconds: float | None
    waiting_for: str  # "worker", or the tenant's quota: "max_running_jobs" / "gpu_seconds_per_day"


def standing(
    summary: QueueSummary | None, tenant_id: uuid.UUID, kind: str, own_ahead: int, sent_ahead: int | None
) -> Standing:
    """Estimate a queued job's standing from the scheduler's summary.

    `sent_ahead`: for a job whose message is out, the messages sent before it (its position, exactly).
    `own_ahead`: for a held job, the tenant's own held jobs ordered before it. Messages out run first;
    then each other tenant's held work interleaves by weight: while this tenant's `own_ahead + 1` jobs
    start, a tenant of weight w gets about `(own_ahead + 1) * w / own_weight` starts, at most its held
    count. That part assumes the other tenants' priorities equal this job's and their recent usage
    balanced; with one tenant the position is exact."""
    if summary is None:
        return Standing(sent_ahead if sent_ahead is not None else own_ahead, None, "worker")
    me = str(tenant_id)
    waiting_for = summary.waiting_for.get(me, "worker")
    if sent_ahead is not None:
        position = sent_ahead
    else:
        my_weight = summary.weights.get(me, 1.0) or 1.0
        turns = own_ahead + 1
        others = sum(
            min(held, math.ceil(turns * summary.weights.get(tenant, 1.0) / my_weight))
            for tenant, held in summary.held.items()
            if tenant != me
        )
        position = summary.dispatched + own_ahead + others
    eta = None
    if waiting_for == "worker":
        seconds = summary.expected_seconds.get(kind, DEFAULT_JOB_SECONDS)
        eta = round(math.ceil((position + 1) / max(1, summary.workers)) * seconds, 1)
    return Standing(position, eta, waiting_for)


# ---------------------------------------------------------------------------------------------------
# Waking the scheduler


def wake(client: redis.Redis, queues: Iterable[str]) -> None:
    """Tell the scheduler that queued work or free capacity changed. Best effort: the scheduler also runs
    every tick, so a lost wake costs at most one tick of latency."""
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in set(queues):
                pipe.publish(wake_channel(queue), b"")
            pipe.execute()
    except redis.RedisError as error:
        log.debug("scheduler not woken: %s", error)


def live_workers(client: redis.Redis, queue: str, now: float, ttl: float) -> int:
    """Workers that announced themselves on `queue` within `ttl` seconds."""
    return int(client.zcount(workers_key(queue), now - ttl, "+inf"))


def announce_worker(client: redis.Redis, queues: Sequence[str], worker: str, now: float, ttl: float) -> None:
    """Record that `worker` consumes `queues` (the scheduler sizes each queue's window by these)."""
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.zadd(workers_key(queue), {worker: now})
            pipe.zremrangebyscore(workers_key(queue), "-inf", now - 10 * ttl)
        pipe.execute()


def retire_worker(client: redis.Redis, queues: Sequence[str], worker: str) -> None:
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.zrem(workers_key(queue), worker)
        pipe.execute()


def describe(candidates: Sequence[Candidate]) -> list[dict[str, Any]]:
    """Log-friendly form of a pass's picks."""
    return [{"job_id": str(c.job_id), "tenant_id": str(c.tenant_id), "kind": c.kind} for c in candidates]
