"""Parts cut off rather than dead: a worker whose real connections to Postgres, Redis or S3 are reset,
black-holed or whose link is down, mid-job (`isolate`: its own network namespace, a proxy per service).

Each case ends with the suite's invariants: every job final, exactly one result set, every object's sha256
equal to its row's, no object without a row.
"""

from __future__ import annotations

import datetime as dt
import re
import time

import pytest
from sqlalchemy import update

from shared.models import Job, JobStatus
from shared.settings import Settings
from shared.specs import JobKind
from tests.faults.checks import all_final, assert_consistent, eventually
from tests.faults.conftest import LONG_REPUBLISH, Isolate, Isolated, pause, resume
from tests.faults.network import Mode, netem_unavailable
from tests.faults.recovery import record
from tests.faults.test_process_faults import train
from tests.integration.conftest import JobClient, WorkerProcess, Workers

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(180)]

OUTAGE = 10.0  # seconds S3 stays down: longer than botocore's retries, shorter than a job's attempts


def start_both(
    isolate: Isolate, workers: Workers, **env: str
) -> tuple[Isolated, WorkerProcess, WorkerProcess]:
    """Worker A inside a namespace (its services behind proxies), worker B on the host, both ready."""
    isolated = isolate()
    a = isolated.start(workers, wait=False, **env)
    b = workers.start(wait=False, env=env)
    a.wait_ready()
    b.wait_ready()
    return isolated, a, b


def task_ended(worker: WorkerProcess, job_id: object) -> bool:
    """The worker's pool process has returned from the job's task (whatever its outcome)."""
    ended = rf"Task genq\.\w+\[{job_id}\] (succeeded|raised|failed|retry|rejected)"
    return re.search(ended, worker.log_text()) is not None


def test_cut_off_worker_cannot_overwrite_the_winning_attempt(
    isolate: Isolate, workers: Workers, jobs: JobClient, settings: Settings
) -> None:
    """Issue 8 (1): A is frozen and cut from the database mid-train; B takes the job over and succeeds;
    A thaws still cut off. A must stop (its lease is gone) and nothing it uploads may replace B's model."""
    isolated, a, b = start_both(isolate, workers)
    pause(b)  # so that A claims the job
    # No checkpoint in the run (they come every 60 s by default): recording one needs the database, so A
    # would fail at its next checkpoint instead of training on to its final upload.
    job_id = jobs.submit(JobKind.train, train(150))
    jobs.wait_until(job_id, lambda job: (job.progress or {}).get("step", 0) >= 20, timeout=60)
    assert (jobs.get(job_id).lease_owner or "").startswith(f"{a.name}@")
    cut = isolated.set(Mode.cut, isolated.database)
    pause(a)
    resume(b)
    taken = jobs.wait_until(job_id, lambda job: job.attempts == 2 and job.status == JobStatus.running, 30)
    record("worker cut from DB (frozen) mid-train", "job running on another worker", time.monotonic() - cut)
    assert (taken.lease_owner or "").startswith(f"{b.name}@")
    jobs.wait(job_id, timeout=90)
    resume(a)  # still cut from the database: it may train on, but must neither finish nor upload over B
    eventually(lambda: task_ended(a, job_id), 60, "worker A returning from the stale attempt")
    isolated.set(Mode.passing, isolated.database)
    assert_consistent(jobs, settings, [job_id])


def test_partitioned_worker_link_down(
    isolate: Isolate, workers: Workers, jobs: JobClient, settings: Settings
) -> None:
    """A's link goes down mid-train (every packet to Postgres, Redis and S3 lost); B requeues and finishes
    the job. The link comes back: A's stale attempt changes nothing."""
    isolated, a, b = start_both(isolate, workers)
    pause(b)
    job_id = jobs.submit(JobKind.train, train(120, checkpoint_every_steps=10))
    jobs.wait_until(job_id, lambda job: (job.progress or {}).get("step", 0) >= 20, timeout=60)
    isolated.ns.link(up=False)
    down = time.monotonic()
    resume(b)
    jobs.wait_until(job_id, lambda job: job.attempts == 2 and job.status == JobStatus.running, 30)
    record("worker link down mid-train", "job running on another worker", time.monotonic() - down)
    job = jobs.wait(job_id, timeout=90)
    record("worker link down mid-train", "job final", time.monotonic() - down)
    assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    isolated.ns.link(up=True)
    eventually(lambda: task_ended(a, job_id), 90, "worker A returning from the stale attempt")
    assert_consistent(jobs, settings, [job_id])


def test_sweeper_without_database_does_not_hog_the_turn(
    isolate: Isolate, workers: Workers, jobs: JobClient, settings: Settings
) -> None:
    """Issue 8 (2): A's database connections are reset (its Redis works, so it can take the sweep turn);
    a job abandoned with an expired lease is requeued by B within a few sweep intervals."""
    isolated, _, _ = start_both(isolate, workers)
    isolated.set(Mode.cut, isolated.database)
    time.sleep(2 * settings.sweep_interval_seconds)  # A's sweeper tries, and fails, a couple of times
    job_id = jobs.insert(JobKind.train, train(10))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with jobs.sessions.begin() as session:  # as if its worker had died holding it
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=JobStatus.running, attempts=1, lease_owner="gone@x:1:0", lease_expires_at=past)
        )
    expired = time.monotonic()
    # Only B's sweeper can requeue it (A's cannot reach the database): running -> queued (or already
    # claimed again by B, attempt 2).
    jobs.wait_until(job_id, lambda job: job.status != JobStatus.running or job.attempts == 2, timeout=20)
    record("sweeper without DB + healthy sweeper", "expired lease requeued", time.monotonic() - expired)
    all_final(jobs, [job_id], timeout=60)
    assert_consistent(jobs, settings, [job_id])


def test_worker_without_database_does_not_swallow_messages(
    isolate: Isolate, workers: Workers, jobs: JobClient, settings: Settings
) -> None:
    """Issue 8 (3): A can read the queue but not the database. Its claims fail; the messages must go to B
    (not be acknowledged and dropped until the republish delay, raised here out of reach). When A's
    database is back, A takes jobs again."""
    isolated, a, b = start_both(isolate, workers, **LONG_REPUBLISH)
    isolated.set(Mode.cut, isolated.database)
    cut = time.monotonic()
    job_ids = [jobs.submit(JobKind.train, train(5)) for _ in range(8)]
    all_final(jobs, job_ids, timeout=90)
    record("worker without DB among 2", "8 tiny jobs final", time.monotonic() - cut)
    assert_consistent(jobs, settings, job_ids)

    # A's database is back, over a slow link (netem delay and loss where the kernel has sch_netem, each
    # proxied chunk delayed otherwise): A consumes again, and latency is not mistaken for a lost lease.
    isolated.set(Mode.passing, isolated.database)
    if netem_unavailable() is None:
        isolated.ns.netem("delay 50ms loss 1%")
    else:
        isolated.set(Mode.slow, delay=0.05)
    pause(b)
    try:
        after = [jobs.submit(JobKind.train, train(5)) for _ in range(2)]
        all_final(jobs, after, timeout=90)
    finally:
        resume(b)
    assert_consistent(jobs, settings, after)
    finals = {j: jobs.get(j) for j in after}
    assert all(
        (job.lease_owner or "").startswith(f"{a.name}@") and job.attempts == 1 for job in finals.values()
    )


@pytest.mark.parametrize("mode", [Mode.cut, Mode.blackhole])
def test_storage_outage_mid_job_is_retried(
    mode: Mode, isolate: Isolate, workers: Workers, jobs: JobClient, settings: Settings
) -> None:
    """Issue 8 (4): S3 refuses (cut) or hangs (blackhole) for OUTAGE seconds while a job checkpoints and
    others wait: jobs go back to the queue or retry, and all end succeeded once S3 is back."""
    isolated = isolate()
    a = isolated.start(workers)
    long = jobs.submit(JobKind.train, train(150, checkpoint_every_steps=10))
    short = [jobs.submit(JobKind.train, train(10)) for _ in range(2)]
    jobs.wait_until(long, lambda job: (job.progress or {}).get("step", 0) >= 15, timeout=60)
    isolated.set(mode, isolated.storage)
    time.sleep(OUTAGE)
    isolated.set(Mode.passing, isolated.storage)
    restored = time.monotonic()
    all_final(jobs, [long, *short], timeout=120)
    record(f"S3 {mode.value} {OUTAGE:.0f} s mid-job", "jobs final after S3 back", time.monotonic() - restored)
    assert_consistent(jobs, settings, [long, *short])
    assert a.process.poll() is None


def test_broker_cut_mid_job(isolate: Isolate, workers: Workers, jobs: JobClient, settings: Settings) -> None:
    """A's Redis connections are reset for OUTAGE seconds while it trains: the job (its state is in SQL)
    finishes once, and A reconnects and consumes again."""
    isolated = isolate()
    a = isolated.start(workers)
    job_id = jobs.submit(JobKind.train, train(100))
    jobs.wait_until(job_id, lambda job: (job.progress or {}).get("step", 0) >= 5, timeout=60)
    isolated.set(Mode.cut, isolated.broker)
    time.sleep(OUTAGE)
    restored = isolated.set(Mode.passing, isolated.broker)
    later = [jobs.submit(JobKind.train, train(5)) for _ in range(2)]
    all_final(jobs, [job_id, *later], timeout=90)
    record(
        f"worker cut from Redis {OUTAGE:.0f} s mid-job",
        "new jobs final after Redis back",
        time.monotonic() - restored,
    )
    assert_consistent(jobs, settings, [job_id, *later])
    assert jobs.get(job_id).attempts == 1 and a.process.poll() is None
