"""Metrics and logs on the real thing: gunicorn (two processes, one multiprocess directory), a real worker,
Postgres, Redis and moto's S3. /metrics is parsed with prometheus_client's own text parser and compared
with what SQL says; the worker's own port is scraped after it ran jobs; one job is followed through the
JSON logs of the API and the worker by its ids."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db import session_factory
from shared.models import Job, JobStatus
from shared.settings import Settings
from tests.conftest import free_port
from tests.integration.api_server import ApiServer, running_api
from tests.integration.conftest import Workers
from tests.unit.api.conftest import Tenant, make_tenant

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOKEN = "operator-" + uuid.uuid4().hex
TINY_CNN = {"family": "cnn", "dataset": "digits", "options": {"max_steps": 20, "width": 8, "batch_size": 32}}
# Runs until canceled (far more steps than the test waits for).
ENDLESS_CNN = {"family": "cnn", "dataset": "digits", "options": {"max_steps": 1_000_000, "width": 8}}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture()
def env(worker_env: dict[str, str]) -> dict[str, str]:
    return {
        **worker_env,
        "GENQ_METRICS_TOKEN": TOKEN,
        "GENQ_METRICS_SQL_CACHE_SECONDS": "0",  # every scrape reads SQL: the test compares at once
        "GENQ_WORKER_METRICS_PORT": str(free_port()),
        "GENQ_LOG_FORMAT": "json",
    }


@pytest.fixture()
def session(worker_settings: Settings) -> Iterator[Session]:
    with session_factory(worker_settings.sql_url)() as session:
        yield session


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape(url: str, token: str = TOKEN) -> Samples:
    response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(response.text)


def sql_counts(session: Session, queues: tuple[str, ...]) -> dict[tuple[str, str], int]:
    session.expire_all()
    query = (
        select(Job.queue, Job.status, func.count())
        .where(Job.queue.in_(queues))
        .group_by(Job.queue, Job.status)
    )
    return {(queue, status.value): count for queue, status, count in session.execute(query)}


def assert_jobs_match_sql(samples: Samples, session: Session, queues: tuple[str, ...]) -> None:
    counts = sql_counts(session, queues)
    for queue in queues:
        for status in JobStatus:
            assert value(samples, "genq_jobs", queue=queue, status=status.value) == counts.get(
                (queue, status.value), 0
            ), (queue, status, counts)
        assert value(samples, "genq_jobs_queued", queue=queue) == counts.get((queue, "queued"), 0)


class Api:
    """The HTTP API as a tenant uses it, counting the job reads it makes (to check the HTTP metrics)."""

    def __init__(self, server: ApiServer, tenant: Tenant) -> None:
        self.server, self.tenant = server, tenant
        self.job_reads = 0

    def submit(self, params: dict[str, Any], request_id: str | None = None) -> str:
        headers = {**self.tenant.headers, **({"X-Request-ID": request_id} if request_id else {})}
        response = requests.post(
            f"{self.server.url}/v1/jobs",
            json={"kind": "train", "params": params},
            headers=headers,
            timeout=30,
        )
        assert response.status_code == 202, response.text
        if request_id:
            assert response.headers["X-Request-ID"] == request_id
        return response.json()["id"]

    def read(self, job_id: str) -> dict[str, Any]:
        response = requests.get(
            f"{self.server.url}/v1/jobs/{job_id}", headers=self.tenant.headers, timeout=30
        )
        assert response.status_code == 200, response.text
        self.job_reads += 1
        return response.json()

    def wait(
        self, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 120
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.read(job_id)
            if done(job):
                return job
            time.sleep(0.3)
        raise TimeoutError(f"job {job_id}: {job['status']} after {timeout}s")


def json_lines(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def test_metrics_match_sql_and_workers_and_logs_follow_a_job(
    env: dict[str, str], worker_settings: Settings, session: Session, tmp_path: Path
) -> None:
    queues = (worker_settings.train_queue, worker_settings.sample_queue)
    train_queue = worker_settings.train_queue
    name = f"metrics-{uuid.uuid4().hex[:8]}"
    tenant = make_tenant(session, name)
    workers = Workers(env, tmp_path / "worker-logs")
    with running_api(env, tmp_path / "api", processes=2) as server:
        metrics_url = f"{server.url}/metrics"
        try:
            api = Api(server, tenant)
            # Operators only: no token is 401, a tenant's key is 403.
            assert requests.get(metrics_url, timeout=30).status_code == 401
            refused = requests.get(metrics_url, headers=tenant.headers, timeout=30)
            assert refused.status_code == 403, refused.text
            assert "genq_jobs" not in refused.text

            # Two jobs queued, no worker yet.
            request_id = f"trace-{uuid.uuid4().hex}"
            followed = api.submit(TINY_CNN, request_id=request_id)
            second = api.submit(TINY_CNN)
            samples = scrape(metrics_url)
            assert value(samples, "genq_jobs_queued", queue=train_queue) == 2
            assert value(samples, "genq_tenant_jobs_queued", tenant_id=str(tenant.id), tenant=name) == 2
            assert (value(samples, "genq_oldest_queued_job_age_seconds", queue=train_queue) or 0) > 0
            assert value(samples, "genq_metrics_sql_up") == 1
            assert_jobs_match_sql(samples, session, queues)

            # A worker runs them; a third one runs until it is canceled.
            worker = workers.start()
            for job_id in (followed, second):
                job = api.wait(job_id, lambda j: j["status"] in ("succeeded", "failed", "canceled"))
                assert job["status"] == "succeeded", job["error"]
            endless = api.submit(ENDLESS_CNN)
            api.wait(endless, lambda j: j["status"] == "running" and (j["progress"] or {}).get("step"))
            time.sleep(2.5)  # a few heartbeats (1 s in FAST_RECOVERY) renew its lease
            samples = scrape(metrics_url)
            assert value(samples, "genq_jobs", queue=train_queue, status="running") == 1
            assert value(samples, "genq_jobs", queue=train_queue, status="succeeded") == 2
            assert value(samples, "genq_jobs_queued", queue=train_queue) == 0
            assert value(samples, "genq_tenant_jobs_queued", tenant_id=str(tenant.id), tenant=name) is None
            assert_jobs_match_sql(samples, session, queues)

            cancel = requests.post(
                f"{server.url}/v1/jobs/{endless}/cancel", headers=tenant.headers, timeout=30
            )
            assert cancel.status_code == 200, cancel.text
            assert api.wait(endless, lambda j: j["status"] == "canceled")["status"] == "canceled"

            # The worker's own port: what it ran, how long, how it held its leases.
            port = env["GENQ_WORKER_METRICS_PORT"]
            own = wait_for_sample(
                f"http://127.0.0.1:{port}/metrics", "genq_worker_jobs_total", kind="train", outcome="canceled"
            )
            assert own, worker.log_text()[-3000:]
            assert value(own, "genq_worker_jobs_total", kind="train", outcome="succeeded") == 2
            assert value(own, "genq_job_duration_seconds_count", kind="train", outcome="succeeded") == 2
            assert (
                value(own, "genq_job_duration_seconds_bucket", kind="train", outcome="succeeded", le="+Inf")
                == 2
            )
            assert value(own, "genq_job_duration_seconds_count", kind="train", outcome="canceled") == 1
            assert value(own, "genq_job_queue_wait_seconds_count", kind="train") == 3
            assert (value(own, "genq_lease_renewals_total", result="renewed") or 0) >= 1
            assert (value(own, "genq_training_samples_per_second", family="cnn") or 0) > 0
            # The only worker's scheduler is the active one and sent all three jobs (a message its pool
            # process, still starting, held past GENQ_REQUEUE_AFTER_SECONDS=3 is sent once more).
            assert value(own, "genq_scheduler_active") == 1
            assert (value(own, "genq_scheduler_dispatched_total", queue=train_queue) or 0) >= 3
            assert (value(own, "genq_scheduler_pass_seconds_count") or 0) >= 1

            # HTTP metrics add up over both gunicorn processes: every job read of this test was counted.
            samples = scrape(metrics_url)
            route = {"method": "GET", "route": "/v1/jobs/<job_id>"}
            assert value(samples, "genq_http_requests_total", **route, status="200") == api.job_reads
            assert value(samples, "genq_http_request_duration_seconds_count", **route) == api.job_reads
            assert (
                value(samples, "genq_http_requests_total", method="GET", route="/metrics", status="403") == 1
            )

            # One job through the logs: the API's lines and the worker's carry its ids.
            api_lines = json_lines(server.log_text())
            assert any(
                r.get("job_id") == followed and r.get("request_id") == request_id for r in api_lines
            ), server.log_text()[-2000:]
            assert any(
                r.get("request_id") == request_id and r.get("tenant_id") == str(tenant.id)
                and r.get("status") == 202 for r in api_lines
            )  # fmt: skip
            worker_lines = [r for r in json_lines(worker.log_text()) if r.get("job_id") == followed]
            assert worker_lines, worker.log_text()[-2000:]
            # (A delivery the sweeper republished carries no request: it was not sent by one.)
            assert {r.get("request_id") for r in worker_lines} <= {request_id, None}, worker_lines
            started = [r for r in worker_lines if "started by" in r["message"]]
            assert started[0]["request_id"] == request_id
            assert started and started[0]["tenant_id"] == str(tenant.id) and started[0]["attempt"] == "1"
        finally:
            workers.stop_all()


def wait_for_sample(url: str, name: str, timeout: float = 30.0, **labels: str) -> Samples:
    """The worker records a job after its task returns: scrape until that job shows."""
    deadline = time.monotonic() + timeout
    samples: Samples = {}
    while time.monotonic() < deadline:
        try:
            samples = parse(requests.get(url, timeout=30).text)
        except requests.ConnectionError:
            samples = {}
        if value(samples, name, **labels):
            break
        time.sleep(0.3)
    return samples
