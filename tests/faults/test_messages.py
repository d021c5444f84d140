"""Messages that are repeated, outlived by a cancel, or malformed, on two shared workers: a job runs at
most once per attempt, a cancel lands in every state, and no poison message stops a worker or loops."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import update

from shared import job_state
from shared.models import Job, JobStatus
from shared.queue import TASK_NAMES
from shared.settings import Settings
from shared.specs import JobKind
from tests.faults.checks import all_final, assert_consistent, eventually, logged
from tests.faults.conftest import FaultWorkers
from tests.faults.test_process_faults import train
from tests.integration import conftest as integration
from tests.integration.conftest import JobClient, WorkerProcess
from worker.sweeper import queue_keys

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(150)]

module_env = integration.module_env
module_settings = integration.module_settings
module_jobs = integration.module_jobs


@pytest.fixture(scope="module")
def pair(
    module_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[WorkerProcess]]:
    pool = FaultWorkers(module_env, Path(tmp_path_factory.mktemp("worker-logs")))
    try:
        started = [pool.start(wait=False) for _ in range(2)]
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        pool.stop_all()


def cancel(jobs: JobClient, job_id: uuid.UUID) -> JobStatus | None:
    with jobs.sessions.begin() as session:
        return job_state.request_cancel(session, job_id)


def test_duplicate_deliveries_run_once(
    pair: list[WorkerProcess], module_jobs: JobClient, module_settings: Settings
) -> None:
    """The same job published twice before it runs, again while it runs and again after it succeeded."""
    jobs = module_jobs
    job_id = jobs.insert(JobKind.train, train(60))
    jobs.publish(job_id)
    jobs.publish(job_id)
    jobs.wait_until(job_id, lambda job: (job.progress or {}).get("step", 0) >= 5, timeout=60)
    jobs.publish(job_id)
    all_final(jobs, [job_id], timeout=60)
    jobs.publish(job_id)
    eventually(
        lambda: sum(w.log_text().count(f"job {job_id} is not queued") for w in pair) >= 3, 30, "3 no-ops"
    )
    assert_consistent(jobs, module_settings, [job_id])
    assert jobs.get(job_id).attempts == 1


def test_cancel_in_every_state(
    pair: list[WorkerProcess], module_jobs: JobClient, module_settings: Settings
) -> None:
    jobs = module_jobs
    expect: dict[uuid.UUID, JobStatus] = {}

    done = jobs.submit(JobKind.train, train(5))
    all_final(jobs, [done], timeout=60)
    assert cancel(jobs, done) == JobStatus.succeeded  # final: a cancel changes nothing
    expect[done] = JobStatus.succeeded

    unpublished = jobs.insert(JobKind.train, train(5))
    assert cancel(jobs, unpublished) == JobStatus.canceled
    jobs.publish(unpublished)  # its message arrives after all: left alone
    expect[unpublished] = JobStatus.canceled

    running = [jobs.submit(JobKind.train, train(1_000_000)) for _ in pair]  # both workers busy
    for job_id in running:
        jobs.wait_until(job_id, lambda job: (job.progress or {}).get("step", 0) > 0, timeout=60)
    waiting = jobs.submit(JobKind.train, train(5))  # held in SQL: both workers are busy, the window full
    assert cancel(jobs, waiting) == JobStatus.canceled
    expect[waiting] = JobStatus.canceled
    for job_id in running:
        assert cancel(jobs, job_id) == JobStatus.canceling
        expect[job_id] = JobStatus.canceled

    # Running on a worker that died: canceling until its lease expires, then the sweeper settles it.
    orphaned = jobs.insert(JobKind.train, train(5))
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    with jobs.sessions.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == orphaned)
            .values(status=JobStatus.running, attempts=1, lease_owner="gone@x:1:0", lease_expires_at=soon)
        )
    assert cancel(jobs, orphaned) == JobStatus.canceling
    expect[orphaned] = JobStatus.canceled

    all_final(jobs, expect, timeout=60)
    logged(pair, f"job {unpublished} is not queued", timeout=30)
    assert not [w for w in pair if str(waiting) in w.log_text()], "a canceled held job reached a worker"
    rows = assert_consistent(jobs, module_settings, expect, expect=expect)
    assert rows[waiting].started_at is None and rows[unpublished].started_at is None


def _raw(queue: str, task: str, args: object, content_type: str = "application/json") -> bytes:
    """A kombu message as the Redis transport stores it (task protocol 2)."""
    task_id = str(uuid.uuid4())
    body = json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 0},
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": queue, "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def test_poison_messages_are_dropped_and_workers_go_on(
    pair: list[WorkerProcess], module_jobs: JobClient, module_settings: Settings
) -> None:
    jobs = module_jobs
    settings = module_settings
    queue = settings.train_queue
    train_task = TASK_NAMES[JobKind.train]
    jobs.celery.send_task(train_task, args=["not-a-uuid"], queue=queue)
    jobs.celery.send_task(train_task, args=[str(uuid.uuid4())], queue=queue)  # no such job
    jobs.celery.send_task(train_task, args=[], queue=queue)  # missing argument
    jobs.celery.send_task("genq.no-such-task", args=[str(uuid.uuid4())], queue=queue)
    client = redis.Redis.from_url(settings.broker_url)
    try:
        client.lpush(queue, b"{not json")
        client.lpush(queue, _raw(queue, train_task, [str(uuid.uuid4())], "application/x-python-serialize"))
        client.lpush(queue, _raw(queue, train_task, {"job": "a dict, not a list"}))
        after = [jobs.submit(JobKind.train, train(5)) for _ in range(2)]
        all_final(jobs, after, timeout=60)
        assert_consistent(jobs, settings, after)
        keys = queue_keys([settings.train_queue, settings.sample_queue], ":", range(10))
        eventually(lambda: sum(client.llen(key) for key in keys) == 0, 30, "queues drained")
        time.sleep(2 * settings.sweep_interval_seconds)  # a poison message requeued would show up again
        assert sum(client.llen(key) for key in keys) == 0
    finally:
        client.close()
    dead = [w.name for w in pair if w.process.poll() is not None]
    assert not dead, f"workers {dead} died on a poison message:\n" + "\n".join(
        line for w in pair for line in w.log_text().splitlines() if "Unrecoverable" in line
    )
    assert logged(pair, "malformed job id", timeout=5)
