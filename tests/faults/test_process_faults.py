"""Processes that die or misbehave: kill -9 at claim, mid-train and mid-generate; SIGTERM mid-job; the
broker losing every message (FLUSHDB) mid-batch. Each ends with every job final exactly once, checked by
`assert_consistent` (result sets, sha256 of every object, no object without a row)."""

from __future__ import annotations

import time

import pytest
import redis

from shared.models import JobStatus
from shared.settings import Settings
from shared.specs import JobKind
from tests.faults.checks import all_final, assert_consistent, eventually, logged
from tests.faults.conftest import LONG_REPUBLISH
from tests.faults.recovery import record
from tests.integration.conftest import JobClient, WorkerProcess, Workers

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(150)]


def train(max_steps: int, **extra: object) -> dict[str, object]:
    """A tiny CNN on the built-in digits: tens of milliseconds a step on one thread."""
    options = {"max_steps": max_steps, "width": 8, "batch_size": 16, "augment": False}
    return {"family": "cnn", "dataset": "digits", "options": options, **extra}


TINY_VAE = {
    "family": "vae",
    "dataset": "digits",
    "options": {"max_steps": 5, "width": 8, "latent_dim": 8, "batch_size": 16},
}


def pair(workers: Workers, **env: str) -> dict[str, WorkerProcess]:
    started = [workers.start(wait=False, env=env) for _ in range(2)]
    for worker in started:
        worker.wait_ready()
    return {worker.name: worker for worker in started}


def owner(workers: dict[str, WorkerProcess], lease_owner: str | None) -> WorkerProcess:
    assert lease_owner is not None
    return workers[lease_owner.split("@")[0]]


def test_kill9_at_claim(workers: Workers, jobs: JobClient, settings: Settings) -> None:
    """Killed the moment its claim commits (before a step or a heartbeat): the lease expires, the survivor
    requeues and runs the job."""
    started = pair(workers)
    job_id = jobs.submit(JobKind.train, train(20))
    claimed = jobs.wait_until(job_id, lambda job: job.status == JobStatus.running, timeout=30)
    victim = owner(started, claimed.lease_owner)
    victim.kill()
    killed = time.monotonic()
    requeued = jobs.wait_until(job_id, lambda job: job.attempts == 2, timeout=30)
    record("kill -9 at claim", "job claimed again", time.monotonic() - killed)
    assert not (requeued.lease_owner or "").startswith(f"{victim.name}@")
    all_final(jobs, [job_id], timeout=60)
    assert_consistent(jobs, settings, [job_id])
    assert jobs.get(job_id).attempts == 2


def test_kill9_mid_train_resumes_from_checkpoint(
    workers: Workers, jobs: JobClient, settings: Settings
) -> None:
    started = pair(workers)
    job_id = jobs.submit(JobKind.train, train(150, checkpoint_every_steps=10))
    running = jobs.wait_until(
        job_id, lambda job: job.checkpoint_key is not None and (job.progress or {}).get("step", 0) >= 20, 60
    )
    victim = owner(started, running.lease_owner)
    victim.kill()
    killed = time.monotonic()
    jobs.wait_until(job_id, lambda job: job.attempts == 2, timeout=30)
    record("kill -9 mid-train", "job claimed again", time.monotonic() - killed)
    all_final(jobs, [job_id], timeout=90)
    assert_consistent(jobs, settings, [job_id])
    [survivor] = (w for w in started.values() if w is not victim)
    assert f"job {job_id} attempt 2 resumes from" in survivor.log_text()


def test_kill9_mid_generate(workers: Workers, jobs: JobClient, settings: Settings) -> None:
    started = pair(workers)
    model = jobs.wait(jobs.submit(JobKind.train, TINY_VAE), timeout=60)
    assert model.status == JobStatus.succeeded, (model.error_code, model.error_message)
    model_id = model.result["model_id"]  # type: ignore[index]
    job_id = jobs.submit(JobKind.generate, {"model_id": model_id, "count": 3000, "shard_size": 256})
    running = jobs.wait_until(job_id, lambda job: (job.progress or {}).get("step", 0) > 0, timeout=60)
    victim = owner(started, running.lease_owner)
    victim.kill()
    killed = time.monotonic()
    jobs.wait_until(job_id, lambda job: job.attempts == 2, timeout=30)
    record("kill -9 mid-generate", "job claimed again", time.monotonic() - killed)
    all_final(jobs, [job_id], timeout=90)
    rows = assert_consistent(jobs, settings, [model.id, job_id])
    assert rows[job_id].attempts == 2
    assert sum(1 for name in jobs.artifacts(job_id) if name.startswith("shards/")) == 12


def test_sigterm_finishes_the_running_job_and_takes_no_more(
    workers: Workers, jobs: JobClient, settings: Settings
) -> None:
    """Warm shutdown: the running job finishes on the worker told to stop; queued jobs go to the other."""
    started = pair(workers)
    first = jobs.submit(JobKind.train, train(80))
    running = jobs.wait_until(first, lambda job: (job.progress or {}).get("step", 0) >= 5, timeout=60)
    stopping = owner(started, running.lease_owner)
    stopping.process.terminate()
    later = [jobs.submit(JobKind.train, train(10)) for _ in range(3)]
    assert stopping.process.wait(timeout=60) == 0, stopping.log_text()[-2000:]
    finals = all_final(jobs, [first, *later], timeout=90)
    assert_consistent(jobs, settings, [first, *later])
    assert finals[first].attempts == 1 and finals[first].lease_owner is not None
    assert all(not (finals[j].lease_owner or "").startswith(f"{stopping.name}@") for j in later)


def test_broker_flush_mid_batch(workers: Workers, jobs: JobClient, settings: Settings) -> None:
    """FLUSHDB while jobs run and wait: the sweepers see dispatched rows with no message behind them and
    hold them again well before the republish-after delay (raised here so that it cannot be the cure);
    the scheduler sends them again in their turn. Held jobs never had a message to lose; messages are
    sent ahead here (two per worker) so that some are waiting in the broker when it is flushed."""
    started = pair(workers, **LONG_REPUBLISH, GENQ_DISPATCH_AHEAD_PER_WORKER="2")
    job_ids = [jobs.submit(JobKind.train, train(25)) for _ in range(10)]
    eventually(
        lambda: sum(jobs.get(j).status == JobStatus.succeeded for j in job_ids) >= 2, 60, "two jobs done"
    )
    client = redis.Redis.from_url(settings.broker_url)
    try:
        client.flushdb()
    finally:
        client.close()
    flushed = time.monotonic()
    still_queued = [j for j in job_ids if jobs.get(j).status == JobStatus.queued]
    assert still_queued, "the batch ended before the flush: nothing was lost"
    logged(started.values(), "its message is not in the broker", timeout=60)
    record("broker FLUSHDB", "lost messages held again and re-sent", time.monotonic() - flushed)
    all_final(jobs, job_ids, timeout=90)
    record("broker FLUSHDB", "batch final", time.monotonic() - flushed)
    assert_consistent(jobs, settings, job_ids)
