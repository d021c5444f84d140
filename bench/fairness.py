"""Fair scheduling on a shared fleet: a newcomer's job beside a tenant's bulk run, weighted shares of
worker time, and how many messages the broker holds while a large batch waits.

    python -m bench.fairness                    # about 5 minutes
    python -m bench.fairness --share-seconds 60 --backlog 500

Real services (bench/common.py): Postgres, Redis, moto's S3 server and genq workers. Each tenant trains a
tiny VAE through the API, then submits `generate count=1` jobs (a fraction of a second of work each).

1. Newcomer: tenant A submits a `--backlog`-job batch; once it runs, tenant B submits one job. B's wait
   (submit -> started) is printed beside one A job's duration and beside the wait FIFO order would give
   it: every A job still queued at B's submit, run at the measured rate.
2. Shares: three tenants with weights 2:1:1 keep backlogs for `--share-seconds`; each tenant's worker
   seconds in that span are printed beside its weight's share.
3. Window: a 10,000-item batch waits while the broker's queue length is sampled; printed beside the
   window (live workers x (1 + dispatch_ahead_per_worker)).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
import uuid
from typing import Any

from sqlalchemy import func, select

from bench.common import ApiTenant, Services, machine_line, make_tenant, services, train_tiny_model
from shared.db import session_factory
from shared.models import Job, JobStatus, Tenant
from shared.usage import set_limits
from worker.sweeper import queue_keys

WORKERS = 2
TOP_UP_BELOW = 100  # queued jobs per tenant under which the shares part submits more
TOP_UP = 300


class Bench:
    def __init__(self, found: Services) -> None:
        from api.app import create_app  # the API in this process, through its test client

        self.found = found
        self.api = create_app(found.settings).test_client()
        self.sessions = session_factory(found.settings.sql_url)

    def tenant(self, name: str, weight: float = 1.0) -> tuple[ApiTenant, str]:
        tenant = make_tenant(self.found.settings, name)
        with self.sessions.begin() as session:
            set_limits(session, session.get(Tenant, tenant.id), weight=weight)
        return tenant, train_tiny_model(self.api.post, self.api.get, tenant)

    def batch(self, tenant: ApiTenant, model_id: str, count: int, first_seed: int = 0) -> dict[str, Any]:
        template = {"kind": "generate", "params": {"model_id": model_id, "count": 1}}
        body = {"template": template, "seeds": list(range(first_seed, first_seed + count))}
        response = self.api.post("/v1/batches", json=body, headers=tenant.headers)
        if response.status_code != 202:
            raise RuntimeError(f"batch refused: {response.status_code} {response.json}")
        return response.json

    def job(self, tenant: ApiTenant, model_id: str) -> str:
        body = {"kind": "generate", "params": {"model_id": model_id, "count": 1, "seed": 1}}
        return self.api.post("/v1/jobs", json=body, headers=tenant.headers).json["id"]

    def cancel(self, tenant: ApiTenant, batch_id: str) -> None:
        self.api.post(f"/v1/batches/{batch_id}/cancel", headers=tenant.headers)

    def row(self, job_id: str) -> Job:
        with self.sessions() as session:
            job = session.get(Job, uuid.UUID(job_id))
            assert job is not None
            return job

    def count(self, tenant: ApiTenant, *statuses: JobStatus) -> int:
        with self.sessions() as session:
            query = select(func.count()).where(Job.tenant_id == tenant.id, Job.status.in_(statuses))
            return session.scalar(query) or 0

    def finished_spans(self, tenant: ApiTenant, since: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
        with self.sessions() as session:
            rows = session.execute(
                select(Job.started_at, Job.finished_at).where(
                    Job.tenant_id == tenant.id, Job.finished_at > since, Job.started_at.is_not(None)
                )
            ).all()
        return [(r.started_at, r.finished_at) for r in rows]

    def broker_length(self) -> int:
        keys = queue_keys([self.found.settings.sample_queue], ":", range(10))
        return sum(self.found.broker.llen(key) for key in keys)


def newcomer(bench: Bench, backlog: int) -> None:
    a, a_model = bench.tenant("bulk")
    b, b_model = bench.tenant("newcomer")
    bulk = bench.batch(a, a_model, backlog)
    while bench.count(a, JobStatus.succeeded) < 20:  # the bulk run is under way
        time.sleep(0.05)
    queued_then = bench.count(a, JobStatus.queued)
    job_id = bench.job(b, b_model)
    submitted = time.time()
    while (row := bench.row(job_id)).started_at is None:
        time.sleep(0.01)
    waited = row.started_at.timestamp() - submitted
    spans = [
        (f - s).total_seconds()
        for s, f in bench.finished_spans(a, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    ]
    a_job = statistics.median(spans)
    fifo = queued_then * a_job / WORKERS
    bench.cancel(a, bulk["id"])
    print(f"\n1. newcomer: tenant A's {backlog}-job batch running on {WORKERS} workers, B submits one job")
    print(f"   B's wait, submit -> started     {waited:7.2f} s")
    print(
        f"   one A job (median)              {a_job:7.2f} s   target: wait <= A job + 1 s = {a_job + 1:.2f} s"
    )
    print(
        f"   FIFO order's wait (computed)    {fifo:7.2f} s"
        f"   ({queued_then} A jobs queued ahead x {a_job:.2f} s / {WORKERS})"
    )
    print(f"   ratio FIFO / fair                {fifo / max(waited, 1e-3):6.0f}x")


def shares(bench: Bench, seconds: float) -> None:
    tenants = [(*bench.tenant(f"w{weight}-{i}", weight), weight) for i, weight in enumerate((2.0, 1.0, 1.0))]
    batches: list[tuple[ApiTenant, str]] = []
    seeds = dict.fromkeys(range(len(tenants)), 0)
    for i, (tenant, model_id, _) in enumerate(tenants):
        batches.append((tenant, bench.batch(tenant, model_id, TOP_UP, seeds[i])["id"]))
        seeds[i] += TOP_UP
    warmup = time.monotonic() + 10
    while time.monotonic() < warmup:
        time.sleep(0.5)
    start = dt.datetime.now(dt.UTC)
    end_at = time.monotonic() + seconds
    while time.monotonic() < end_at:  # each tenant keeps a backlog: they submit without pause
        for i, (tenant, model_id, _) in enumerate(tenants):
            if bench.count(tenant, JobStatus.queued) < TOP_UP_BELOW:
                batches.append((tenant, bench.batch(tenant, model_id, TOP_UP, seeds[i])["id"]))
                seeds[i] += TOP_UP
        time.sleep(0.5)
    end = dt.datetime.now(dt.UTC)
    for tenant, batch_id in batches:
        bench.cancel(tenant, batch_id)
    used = []
    for tenant, _, _ in tenants:
        total = 0.0
        for started, finished in bench.finished_spans(tenant, start):
            overlap = (min(finished, end) - max(started, start)).total_seconds()
            total += max(0.0, overlap)
        used.append(total)
    weights = [w for _, _, w in tenants]
    print(f"\n2. shares: weights 2:1:1, every tenant backlogged, {seconds:.0f} s on {WORKERS} workers")
    print("   tenant  weight  worker s   share    target   error")
    worst = 0.0
    for i, (total, weight) in enumerate(zip(used, weights, strict=True)):
        share, target = total / sum(used), weight / sum(weights)
        error = (share - target) / target
        worst = max(worst, abs(error))
        print(f"   {i + 1:>6}  {weight:6.0f}  {total:8.1f}  {share:6.1%}   {target:6.1%}  {error:+6.1%}")
    print(f"   largest error {worst:.1%} (target: within 10 %)")
    busy = sum(used) / (WORKERS * (end - start).total_seconds())
    ahead = bench.found.settings.dispatch_ahead_per_worker
    print(f"   workers busy {busy:.0%} of the span (dispatch_ahead_per_worker={ahead})")


def window(bench: Bench, size: int) -> None:
    c, model_id = bench.tenant("large")
    batch = bench.batch(c, model_id, size)
    longest, samples, deadline = 0, 0, time.monotonic() + 15
    while time.monotonic() < deadline:
        longest = max(longest, bench.broker_length())
        samples += 1
        time.sleep(0.02)
    queued = bench.count(c, JobStatus.queued)
    bench.cancel(c, batch["id"])
    allowed = WORKERS * (1 + bench.found.settings.dispatch_ahead_per_worker)
    print(f"\n3. window: a {size}-item batch waiting ({queued} still queued after 15 s)")
    print(f"   broker queue length, largest of {samples} samples: {longest}   window: {allowed}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=2000, help="tenant A's batch in part 1")
    parser.add_argument("--share-seconds", type=float, default=150, help="length of part 2")
    parser.add_argument("--window-batch", type=int, default=10_000, help="the batch of part 3")
    parser.add_argument("--ahead", type=int, default=0, help="GENQ_DISPATCH_AHEAD_PER_WORKER for the run")
    args = parser.parse_args(argv)
    print(f"genq fair scheduling, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {machine_line()}", flush=True)
    began = time.monotonic()
    overrides = {"GENQ_RATE_LIMIT": "1000000/second", "GENQ_DISPATCH_AHEAD_PER_WORKER": str(args.ahead)}
    with services(overrides) as found:
        for worker in found.start_workers(WORKERS):
            worker.wait_ready()
        bench = Bench(found)
        newcomer(bench, args.backlog)
        shares(bench, args.share_seconds)
        window(bench, args.window_batch)
    print(f"\n{machine_line()}; total {time.monotonic() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
