"""Failure and control paths on real workers: cancel (queued and running), a worker killed mid-training,
duplicate delivery, a job whose message was lost, and errors that fail a job without retrying it."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import func, select

from shared import job_state
from shared.models import JobStatus, TrainedModel
from shared.specs import JobKind
from tests.integration.conftest import JobClient, WorkerProcess, Workers, shared_workers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

pair = shared_workers(2)  # two workers racing for the same messages


def _train(max_steps: int, **extra: object) -> dict[str, object]:
    options = {"max_steps": max_steps, "width": 8, "batch_size": 16, "augment": False}
    return {"family": "cnn", "dataset": "digits", "options": options, **extra}


def _cancel(jobs: JobClient, job_id: uuid.UUID) -> JobStatus | None:
    with jobs.sessions.begin() as session:
        return job_state.request_cancel(session, job_id)


def _logged(workers: list[WorkerProcess], text: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in worker.log_text() for worker in workers):
            return True
        time.sleep(0.1)
    return False


def test_cancel_queued_and_running(pair: list[WorkerProcess], module_jobs: JobClient) -> None:
    jobs = module_jobs
    queued = jobs.insert(JobKind.train, _train(5))
    assert _cancel(jobs, queued) == JobStatus.canceled
    jobs.publish(queued)  # its message still reaches a worker, which leaves it alone

    running = jobs.submit(JobKind.train, _train(1_000_000))
    jobs.wait_until(running, lambda job: job.status == JobStatus.running and (job.progress or {}).get("step"))
    asked = time.monotonic()
    assert _cancel(jobs, running) == JobStatus.canceling
    job = jobs.wait(running, timeout=30)
    took = time.monotonic() - asked
    assert job.status == JobStatus.canceled and job.finished_at is not None
    assert took < 5, f"cancel took {took:.1f}s"
    assert jobs.artifacts(running) == {}

    assert _logged(pair, f"job {queued} is not queued")
    never = jobs.get(queued)
    assert (never.status, never.attempts, never.started_at) == (JobStatus.canceled, 0, None)


def test_killed_worker_job_is_requeued_and_resumes_from_checkpoint(workers: Workers, jobs: JobClient) -> None:
    started = {worker.name: worker for worker in (workers.start(wait=False), workers.start(wait=False))}
    for worker in started.values():
        worker.wait_ready()
    job_id = jobs.submit(JobKind.train, _train(60, checkpoint_every_steps=5))
    checkpointed = jobs.wait_until(job_id, lambda job: job.checkpoint_key is not None, timeout=60)
    assert checkpointed.status == JobStatus.running and checkpointed.attempts == 1
    victim = started.pop(checkpointed.lease_owner.split("@")[0])  # type: ignore[union-attr]
    [survivor] = started.values()
    victim.kill()
    killed_at = time.monotonic()

    # The survivor's sweeper finds the expired lease, requeues the job and publishes it again.
    requeued = jobs.wait_until(job_id, lambda job: job.attempts == 2, timeout=30)
    assert requeued.lease_owner and requeued.lease_owner.startswith(f"{survivor.name}@")
    job = jobs.wait(job_id, timeout=60)
    assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    assert job.attempts == 2 and job.progress["step"] == 60  # type: ignore[index]
    # The resume point the first attempt recorded, under its own prefix (it may have saved a later one than
    # `checkpointed` saw before it was killed).
    first_attempt = f"tenants/{jobs.tenant_id}/jobs/{job_id}/attempts/1/checkpoints/step-"
    assert f"job {job_id} attempt 2 resumes from {first_attempt}" in survivor.log_text()
    assert time.monotonic() - killed_at < 60


def test_duplicate_delivery_runs_once(pair: list[WorkerProcess], module_jobs: JobClient) -> None:
    jobs = module_jobs
    job_id = jobs.insert(JobKind.train, _train(10))
    jobs.publish(job_id)
    jobs.publish(job_id)
    job = jobs.wait(job_id, timeout=60)
    assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    assert _logged(pair, f"job {job_id} is not queued"), "the second delivery never arrived"
    job = jobs.get(job_id)
    assert (job.status, job.attempts) == (JobStatus.succeeded, 1)
    with jobs.sessions() as session:
        models = session.scalar(select(func.count()).where(TrainedModel.training_job_id == job_id))
    assert models == 1 and len(jobs.artifacts(job_id)) == 3


def test_a_job_whose_wake_was_lost_runs_at_the_next_tick(
    pair: list[WorkerProcess], module_jobs: JobClient
) -> None:
    job_id = module_jobs.insert(JobKind.train, _train(5))  # committed, the scheduler never woken
    job = module_jobs.wait(job_id, timeout=60)
    assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    assert job.published_at is not None and job.attempts == 1


def test_bad_requests_fail_with_clear_codes_and_no_retry(
    pair: list[WorkerProcess], module_jobs: JobClient
) -> None:
    jobs = module_jobs
    bad_option = jobs.submit(JobKind.train, {"family": "cnn", "dataset": "digits", "options": {"width": 2}})
    no_dataset = jobs.submit(JobKind.train, {"family": "cnn", "dataset": str(uuid.uuid4())})
    no_model = jobs.submit(JobKind.generate, {"model_id": str(uuid.uuid4()), "count": 1})
    expected = {bad_option: "invalid_params", no_dataset: "invalid_dataset", no_model: "model_not_found"}
    for job_id, code in expected.items():
        job = jobs.wait(job_id, timeout=30)
        assert (job.status, job.error_code, job.attempts) == (JobStatus.failed, code, 1), job.error_message
        assert job.error_message
    assert "width: Input should be greater than or equal to 8" in (jobs.get(bad_option).error_message or "")
