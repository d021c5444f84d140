"""A queued job's poll and a scheduler pass when the queue is deep: 1,000,000 queued jobs in Postgres.

    python -m bench.queue_depth                  # about 2 minutes (most of it loading the rows)
    python -m bench.queue_depth --rows 200000

A fresh, migrated Postgres database (bench/common.py). Tenant "bulk" holds `--rows` queued jobs in one
queue; tenant "small" holds 100. Printed, each the median of 30 runs, beside the same at depth 100:

- the SQL behind a queued job's standing in its view (api/queries.job_standing): at the back of the
  1,000,000-job tenant, and 100 deep;
- the COUNT the view used before the scheduler (every queued row ahead, by priority and age), with the
  index it had then (created for this comparison);
- one scheduler pass choosing the next job (worker/scheduler.py), with no message sent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
import uuid
from collections.abc import Callable

import psycopg
from sqlalchemy import and_, func, or_, select, text

from bench.common import _create_database, _drop_database, machine_line
from shared.db import dispose_engines, engine_for, session_factory
from shared.models import Job, JobStatus, Tenant
from shared.scheduling import order_key
from shared.settings import Settings

QUEUE = "genq.depth.sample"
RUNS = 30


def median_ms(run: Callable[[], object], runs: int = RUNS) -> float:
    run()  # warm: plans cached, pages in memory
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def load(url: str, rows: int) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID]:
    """The two tenants and their held jobs (COPY); returns (bulk, small, back job, job 100 deep)."""
    sessions = session_factory(url)
    with sessions.begin() as session:
        bulk, small = Tenant(name="bulk"), Tenant(name="small")
        session.add_all([bulk, small])
        session.flush()
        bulk_id, small_id = bulk.id, small.id
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    columns = (
        "id, tenant_id, kind, params, status, queue, priority, attempts, created_at, updated_at, order_key"
    )
    back = deep = uuid.uuid4()
    # A plain connection: the service's statement timeout would cut the COPY short.
    raw = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY jobs ({columns}) FROM STDIN") as copy:
            for tenant, count in ((bulk_id, rows), (small_id, 100)):
                for seq in range(1, count + 1):
                    job_id = uuid.uuid4()
                    if tenant == bulk_id and seq == rows:
                        back = job_id
                    if tenant == small_id and seq == 100:
                        deep = job_id
                    when = start + dt.timedelta(microseconds=seq)
                    copy.write_row((job_id, tenant, "generate", "{}", "queued", QUEUE, 0, 0, when, when,
                                    order_key(0, seq)))  # fmt: skip
        with sessions.begin() as session:
            session.execute(Tenant.__table__.update().where(Tenant.id == bulk_id).values(last_job_seq=rows))
        raw.commit()
        cursor.execute("ANALYZE jobs")
        raw.commit()
    finally:
        raw.close()
    return bulk_id, small_id, back, deep


def old_count(session_factory_: Callable, job_id: uuid.UUID) -> Callable[[], object]:
    """The queue position as the view computed it before the scheduler."""

    def run() -> object:
        with session_factory_() as session:
            job = session.get(Job, job_id)
            ahead = or_(
                Job.priority > job.priority,
                and_(
                    Job.priority == job.priority,
                    or_(
                        Job.created_at < job.created_at,
                        and_(Job.created_at == job.created_at, Job.id < job.id),
                    ),
                ),
            )
            query = select(func.count()).where(Job.status == JobStatus.queued, Job.queue == job.queue, ahead)
            return session.scalar(query)

    return run


def standing_of(session_factory_: Callable, job_id: uuid.UUID) -> Callable[[], object]:
    from api.queries import job_standing  # the view's SQL, with no scheduler summary

    def run() -> object:
        with session_factory_() as session:
            job = session.get(Job, job_id)
            return job_standing(session, job, None)

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    print(f"genq queue depth, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {machine_line()}", flush=True)
    url = _create_database()
    try:
        began = time.monotonic()
        _, _, back, deep = load(url, args.rows)
        print(f"{args.rows:,} + 100 queued jobs loaded in {time.monotonic() - began:.0f} s", flush=True)
        sessions = session_factory(url)
        print(f"\nmedian of {RUNS}, ms            at the back of {args.rows:,}   100 deep   ratio")
        now_back, now_deep = median_ms(standing_of(sessions, back)), median_ms(standing_of(sessions, deep))
        print(
            f"  job view standing (now)      {now_back:10.2f}   {now_deep:8.2f}   {now_back / now_deep:5.1f}x"
        )
        print(f"    -> position {standing_of(sessions, back)().position:,} (exact: {args.rows - 1:,})")

        from worker.scheduler import Scheduler

        settings = Settings(database_url=url, sample_queue=QUEUE, train_queue=f"{QUEUE}.train")
        scheduler = Scheduler(settings, publisher=lambda messages: [])  # chooses and marks; sends nothing
        scheduler._summary_at = dict.fromkeys(scheduler.queues, float("inf"))  # the pass, not the summary
        pass_ms = median_ms(scheduler.run_pass)
        scheduler.close()
        print(f"  scheduler pass (choose 1)    {pass_ms:10.2f}")

        with engine_for(url).begin() as conn:
            conn.execute(
                text("CREATE INDEX ix_old_queue_order ON jobs (status, queue, priority, created_at)")
            )
            conn.execute(text("ANALYZE jobs"))
        old_back, old_deep = median_ms(old_count(sessions, back), 5), median_ms(old_count(sessions, deep), 5)
        print(
            f"  COUNT ahead (before)         {old_back:10.2f}   {old_deep:8.2f}   {old_back / old_deep:5.1f}x"
        )
        print(f"  now / before at the back     {now_back / old_back:10.3f}")
    finally:
        dispose_engines(url)
        _drop_database(url)
    print(f"\n{machine_line()}; total {time.monotonic() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
