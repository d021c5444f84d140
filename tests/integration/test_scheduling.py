"""The scheduler with real workers, Postgres, Redis and S3: fair order, the window, quotas, request limits,
failover, cancel of held work."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.app import create_app
from shared.models import Batch, Job, JobStatus, Tenant
from shared.scheduling import leader_key
from shared.settings import Settings
from shared.specs import JobKind
from shared.tenants import create_api_key
from shared.usage import set_limits
from tests.faults.checks import all_final, eventually
from tests.integration.conftest import JobClient, Workers
from worker.sweeper import queue_keys

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def train(max_steps: int) -> dict[str, object]:
    """A tiny CNN on the built-in digits: well under a second of work."""
    options = {"max_steps": max_steps, "width": 8, "batch_size": 16, "augment": False}
    return {"family": "cnn", "dataset": "digits", "options": options}


def limit(jobs: JobClient, **limits: object) -> None:
    with jobs.sessions.begin() as session:
        set_limits(session, session.get(Tenant, jobs.tenant_id), **limits)


def api_client(settings: Settings, jobs: JobClient) -> tuple[FlaskClient, dict[str, str]]:
    with jobs.sessions.begin() as session:
        _, key = create_api_key(session, jobs.tenant_id, "test")
    return create_app(settings).test_client(), {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def tenants(worker_settings: Settings) -> Iterator[list[JobClient]]:
    clients = [JobClient(worker_settings) for _ in range(3)]  # each its own tenant
    yield clients
    for client in clients:
        client.close()


def broker_length(settings: Settings, queue: str) -> int:
    client = redis.Redis.from_url(settings.broker_url)
    try:
        return sum(client.llen(key) for key in queue_keys([queue], ":", range(10)))
    finally:
        client.close()


def test_a_small_job_overtakes_a_backlog_and_the_broker_holds_only_the_window(
    workers: Workers, tenants: list[JobClient], worker_settings: Settings
) -> None:
    workers.start()
    a, b, _ = tenants
    backlog = [a.insert(JobKind.train, train(3)) for _ in range(12)]
    a.wake()
    a.wait(backlog[1], JobStatus.succeeded, timeout=60)
    small = b.submit(JobKind.train, train(3))
    longest = 0
    while b.get(small).started_at is None:  # bounded by the test's timeout
        longest = max(longest, broker_length(worker_settings, worker_settings.train_queue))
        time.sleep(0.02)
    all_final(a, [*backlog, small], timeout=120)
    submitted, started = b.get(small).created_at, b.get(small).started_at
    overtaken = [j for j in backlog if submitted < a.get(j).started_at < started]
    fifo = [j for j in backlog if a.get(j).started_at > submitted]
    print(f"\nB's job started after {len(overtaken)} of A's jobs (FIFO: {len(fifo)}); broker max {longest}")
    assert len(overtaken) <= 1, "at most the one message already out runs before the newcomer"
    assert len(fifo) >= 5, "the backlog was still long when B's job came"
    assert longest <= 1, "one worker: one message in the broker at most"


def test_running_and_daily_quotas_hold_a_tenant_back_and_say_so(
    workers: Workers, tenants: list[JobClient], worker_settings: Settings
) -> None:
    for _ in range(2):
        workers.start(wait=False)
    for worker in workers.started:
        worker.wait_ready()
    capped, spender, _ = tenants
    limit(capped, max_running_jobs=1)
    client, headers = api_client(worker_settings, capped)
    ids = [client.post("/v1/jobs", json={"kind": "train", "params": train(10)}, headers=headers).json["id"]]
    ids += [client.post("/v1/jobs", json={"kind": "train", "params": train(10)}, headers=headers).json["id"]]
    ids += [client.post("/v1/jobs", json={"kind": "train", "params": train(10)}, headers=headers).json["id"]]
    job_ids = [uuid.UUID(i) for i in ids]
    seen_waiting, most_running = False, 0
    deadline = time.monotonic() + 120
    while not all(capped.get(j).status == JobStatus.succeeded for j in job_ids):
        assert time.monotonic() < deadline, "the capped tenant's jobs did not finish"
        statuses = [capped.get(j).status for j in job_ids]
        most_running = max(most_running, statuses.count(JobStatus.running))
        queued = [j for j, s in zip(ids, statuses, strict=True) if s == JobStatus.queued]
        if queued and statuses.count(JobStatus.running):
            view = client.get(f"/v1/jobs/{queued[-1]}", headers=headers).json
            seen_waiting |= view["waiting_for"] == "max_running_jobs"
        time.sleep(0.05)
    assert most_running == 1, "two workers, but the tenant may run one job at a time"
    assert seen_waiting, "a held job's view names the quota it waits for"
    usage = client.get("/v1/usage", headers=headers).json
    assert usage["limits"]["max_running_jobs"] == 1 and usage["queued"] == usage["running"] == 0
    assert usage["gpu_seconds_today"] > 0

    limit(spender, gpu_seconds_per_day=0.001)
    first = spender.submit(JobKind.train, train(3))
    spender.wait(first, JobStatus.succeeded, timeout=60)
    later = [spender.submit(JobKind.train, train(3)) for _ in range(2)]
    client, headers = api_client(worker_settings, spender)
    time.sleep(3)  # several scheduler ticks
    assert all(spender.get(j).status == JobStatus.queued for j in later)
    view = client.get(f"/v1/jobs/{later[0]}", headers=headers).json
    assert view["waiting_for"] == "gpu_seconds_per_day" and view["queue_eta_seconds"] is None
    assert client.get("/v1/usage", headers=headers).json["waiting_for"] == "gpu_seconds_per_day"
    limit(spender, gpu_seconds_per_day=None)  # an operator raises the quota: they run
    all_final(spender, later, timeout=60)


def test_queued_quota_and_request_limits_answer_429_and_write_nothing(
    service_settings: Settings, tenants: list[JobClient]
) -> None:
    jobs = tenants[0]
    limit(jobs, max_queued_jobs=3)
    client, headers = api_client(service_settings, jobs)
    batch = {"items": [{"kind": "train", "params": train(3)}] * 4}
    refused = client.post("/v1/batches", json=batch, headers=headers)
    assert refused.status_code == 429, refused.json
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.json["error"]["code"] == "quota_exceeded"
    assert refused.json["error"]["details"][0]["field"] == "max_queued_jobs"
    assert "max_queued_jobs" in refused.json["error"]["message"]
    with jobs.sessions() as session:
        assert _rows(session, jobs.tenant_id) == (0, 0)
    for _ in range(3):
        assert (
            client.post("/v1/jobs", json={"kind": "train", "params": train(3)}, headers=headers).status_code
            == 202
        )
    over = client.post("/v1/jobs", json={"kind": "train", "params": train(3)}, headers=headers)
    assert over.status_code == 429 and over.json["error"]["details"][0]["field"] == "max_queued_jobs"
    with jobs.sessions() as session:
        assert _rows(session, jobs.tenant_id) == (3, 0)

    # Request limits per key, counted in Redis: two API processes share one budget.
    limited = service_settings.model_copy(update={"rate_limit": "4/minute"})
    first, second = create_app(limited).test_client(), create_app(limited).test_client()
    other_client, other_headers = api_client(limited, tenants[1])
    answers = [(first if i % 2 else second).get("/v1/usage", headers=headers) for i in range(5)]
    assert [a.status_code for a in answers] == [200] * 4 + [429]
    assert int(answers[-1].headers["Retry-After"]) > 0
    assert answers[-1].json["error"]["code"] == "rate_limited"
    assert answers[-1].json["error"]["details"][0]["field"] == "Authorization"
    assert other_client.get("/v1/usage", headers=other_headers).status_code == 200  # another key
    assert first.get("/healthz").status_code == 200  # not limited


def _rows(session: Session, tenant_id: uuid.UUID) -> tuple[int, int]:
    jobs = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id))
    batches = session.scalar(select(func.count()).select_from(Batch).where(Batch.tenant_id == tenant_id))
    return jobs or 0, batches or 0


def test_another_scheduler_takes_over_and_no_job_is_sent_twice(
    workers: Workers, tenants: list[JobClient], worker_settings: Settings
) -> None:
    lease = {"GENQ_SCHEDULER_LEASE_SECONDS": "3"}
    for _ in range(2):
        workers.start(wait=False, env=lease)
    for worker in workers.started:
        worker.wait_ready()
    jobs = tenants[0]
    client = redis.Redis.from_url(worker_settings.broker_url)
    key = leader_key([worker_settings.train_queue, worker_settings.sample_queue])
    token = eventually(lambda: client.get(key), 20, "an active scheduler").decode()
    pid = int(token.split(":")[1])
    [active] = [w for w in workers.started if w.process.pid == pid]
    [survivor] = [w for w in workers.started if w is not active]
    job_ids = [jobs.insert(JobKind.train, train(5)) for _ in range(8)]
    active.kill()
    killed = time.monotonic()
    jobs.wake()
    taken = eventually(lambda: (v := client.get(key)) and v.decode() != token and v, 20, "a new scheduler")
    takeover = time.monotonic() - killed
    client.close()
    assert int(taken.decode().split(":")[1]) == survivor.process.pid
    finals = all_final(jobs, job_ids, timeout=120)
    print(f"\nscheduler takeover after a kill -9: {takeover:.1f} s (lease 3 s)")
    assert takeover < 3 + 2, "within the lock's lease and a tick"
    assert all(job.status == JobStatus.succeeded and job.attempts == 1 for job in finals.values())
    assert "is not queued" not in survivor.log_text(), "a job was sent twice"


def test_cancelling_a_held_batch_is_one_update_and_never_reaches_a_worker(
    workers: Workers, tenants: list[JobClient], worker_settings: Settings
) -> None:
    worker = workers.start()
    jobs = tenants[0]
    client, headers = api_client(worker_settings, jobs)
    busy = jobs.submit(JobKind.train, train(1_000_000))  # holds the only worker: the window is full
    jobs.wait(busy, JobStatus.running, timeout=60)
    batch = {"items": [{"kind": "train", "params": train(3)}] * 500}
    created = client.post("/v1/batches", json=batch, headers=headers).json
    time.sleep(2)  # ticks pass: nothing more is sent while the worker is busy
    assert broker_length(worker_settings, worker_settings.train_queue) == 0
    canceled = client.post(f"/v1/batches/{created['id']}/cancel", headers=headers).json
    assert canceled["counts"]["canceled"] == 500
    client.post(f"/v1/jobs/{busy}/cancel", headers=headers)
    jobs.wait(busy, JobStatus.canceled, timeout=60)
    time.sleep(2)
    log = worker.log_text()
    assert not [j for j in created["job_ids"] if j in log], "a canceled held job reached the worker"
