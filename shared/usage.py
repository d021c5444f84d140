"""Tenants' limits and worker-time usage in SQL: what the scheduler charges, the API checks and
`GET /v1/usage` shows.

Worker time is charged when an attempt ends (finished, failed, canceled or handed back after a fault):
to the tenant's decayed fair-share total and to its row for the UTC day.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.db import capped_count
from shared.models import Job, JobStatus, Tenant, TenantUsage, utcnow
from shared.scheduling import decayed
from shared.settings import get_settings

LIMIT_FIELDS = ("weight", "max_queued_jobs", "max_running_jobs", "gpu_seconds_per_day", "rate_limit")
QUEUED_COUNT_CAP = 1_000_000  # counting stops here: a quota is never set higher


@dataclass(frozen=True)
class QuotaExceeded(Exception):
    """A submission over one of the tenant's quotas: nothing was written."""

    quota: str
    limit: float
    current: float
    retry_after: int  # seconds

    def __str__(self) -> str:
        return f"{self.quota} quota reached ({self.current:g} of {self.limit:g})"


def reserve_seqs(session: Session, tenant_id: uuid.UUID, count: int, retry_after: int = 30) -> int:
    """Take `count` consecutive sequence numbers for a tenant's new jobs and return the first; raise
    QuotaExceeded (the caller rolls back) when they would take the tenant past `max_queued_jobs`.

    The UPDATE locks the tenant's row until the transaction ends, so one tenant's submissions are
    counted against its queued quota one at a time (other tenants are not held up)."""
    row = session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(last_job_seq=Tenant.last_job_seq + count)
        .returning(Tenant.last_job_seq, Tenant.max_queued_jobs)
    ).one()
    if row.max_queued_jobs is not None:
        queued = count_queued(session, tenant_id, cap=row.max_queued_jobs + 1)
        if queued + count > row.max_queued_jobs:
            raise QuotaExceeded("max_queued_jobs", row.max_queued_jobs, queued, retry_after)
    return row.last_job_seq - count + 1


def count_queued(session: Session, tenant_id: uuid.UUID, cap: int = QUEUED_COUNT_CAP) -> int:
    """The tenant's queued jobs, counted up to `cap` (the quota plus one is enough to decide)."""
    queued = select(Job.id).where(Job.tenant_id == tenant_id, Job.status == JobStatus.queued)
    return capped_count(session, queued, cap)


def _today(now: dt.datetime) -> dt.date:
    return now.astimezone(dt.UTC).date()


def record_worker_time(session: Session, tenant_id: uuid.UUID, seconds: float, now: dt.datetime) -> None:
    """Charge an ended attempt's worker time to its tenant (fair share and today's total)."""
    seconds = max(0.0, seconds)
    half_life = get_settings().fair_share_half_life_seconds
    tenant = session.execute(
        select(Tenant.share_seconds, Tenant.share_at).where(Tenant.id == tenant_id).with_for_update()
    ).first()
    if tenant is None:
        return
    share = decayed(tenant.share_seconds, tenant.share_at, now, half_life) + seconds
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(share_seconds=share, share_at=now))
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(TenantUsage).values(
        tenant_id=tenant_id, day=_today(now), worker_seconds=seconds, jobs=1
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[TenantUsage.tenant_id, TenantUsage.day],
            set_={
                "worker_seconds": TenantUsage.worker_seconds + seconds,
                "jobs": TenantUsage.jobs + 1,
            },
        )
    )


def seconds_today(session: Session, tenant_ids: list[uuid.UUID], now: dt.datetime) -> dict[uuid.UUID, float]:
    """Worker seconds charged today (UTC) per tenant."""
    if not tenant_ids:
        return {}
    rows = session.execute(
        select(TenantUsage.tenant_id, TenantUsage.worker_seconds).where(
            TenantUsage.tenant_id.in_(tenant_ids), TenantUsage.day == _today(now)
        )
    )
    return {row.tenant_id: row.worker_seconds for row in rows}


def seconds_to_midnight(now: dt.datetime) -> int:
    tomorrow = dt.datetime.combine(_today(now) + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return max(1, int((tomorrow - now).total_seconds()))


def limits_of(tenant: Tenant) -> dict[str, Any]:
    return {name: getattr(tenant, name) for name in LIMIT_FIELDS}


def set_limits(session: Session, tenant: Tenant, **limits: Any) -> dict[str, Any]:
    """Change some of a tenant's limits (a value of None removes that limit; weight must be positive)."""
    unknown = set(limits) - set(LIMIT_FIELDS)
    if unknown:
        raise ValueError(f"unknown limit: {', '.join(sorted(unknown))}")
    if "weight" in limits and (limits["weight"] is None or limits["weight"] <= 0):
        raise ValueError("weight must be a positive number")
    for name in ("max_queued_jobs", "max_running_jobs", "gpu_seconds_per_day"):
        value = limits.get(name)
        if value is not None and value < 0:
            raise ValueError(f"{name} must be 0 or more")
    if limits.get("rate_limit"):
        from limits import parse_many  # the API's extra; only an admin setting a rate limit needs it

        try:
            parse_many(limits["rate_limit"])
        except ValueError as error:
            raise ValueError(f"rate_limit: {error}") from None
    for name, value in limits.items():
        setattr(tenant, name, value)
    session.flush()
    return limits_of(tenant)


def usage_view(session: Session, tenant: Tenant, now: dt.datetime | None = None) -> dict[str, Any]:
    """What `GET /v1/usage` returns: the tenant's queued and running jobs, worker time used today, its
    limits, and which quota (if any) holds its queued jobs back."""
    now = now or utcnow()
    counts = dict(
        session.execute(
            select(Job.status, func.count())
            .where(
                Job.tenant_id == tenant.id,
                Job.status.in_([JobStatus.queued, JobStatus.running, JobStatus.canceling]),
            )
            .group_by(Job.status)
        ).all()
    )
    running = counts.get(JobStatus.running, 0) + counts.get(JobStatus.canceling, 0)
    used = seconds_today(session, [tenant.id], now).get(tenant.id, 0.0)
    waiting_for = None
    if tenant.gpu_seconds_per_day is not None and used >= tenant.gpu_seconds_per_day:
        waiting_for = "gpu_seconds_per_day"
    elif tenant.max_running_jobs is not None and running >= tenant.max_running_jobs:
        waiting_for = "max_running_jobs"
    return {
        "tenant_id": str(tenant.id),
        "queued": counts.get(JobStatus.queued, 0),
        "running": running,
        "gpu_seconds_today": round(used, 3),
        "day_resets_in_seconds": seconds_to_midnight(now),
        "limits": limits_of(tenant),
        "waiting_for": waiting_for,
    }
