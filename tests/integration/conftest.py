"""Real Celery worker subprocesses (`celery -A worker.celery_app worker`) on the service_env, and helpers
to insert, publish and watch job rows directly in SQL.

Workers get short leases and a fast sweeper so recovery is testable in seconds; everything they start is
stopped at the end of the test (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import job_state
from shared.db import session_factory
from shared.models import Artifact, Job, JobStatus, Tenant
from shared.queue import make_celery, queue_for
from shared.scheduling import order_key, wake
from shared.settings import Settings
from shared.specs import JobKind
from shared.usage import reserve_seqs
from shared.worker_launch import job_worker_argv, job_worker_env
from tests.conftest import ROOT
from worker.dispatch import CeleryPublisher, JobMessage

# Leases and sweeps in seconds, so a killed worker's job is requeued within a few seconds.
FAST_RECOVERY = {
    "GENQ_LEASE_SECONDS": "4",
    "GENQ_HEARTBEAT_SECONDS": "1",
    "GENQ_SWEEP_INTERVAL_SECONDS": "1",
    "GENQ_REQUEUE_AFTER_SECONDS": "3",
    "GENQ_PROGRESS_INTERVAL_SECONDS": "0.2",
    "GENQ_TORCH_THREADS": "1",
    "GENQ_DEVICE": "cpu",
}
READY_TIMEOUT = 90.0  # a spawned pool process imports torch; slow on a busy machine


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if " ready." in text and "pool process" in text and "ready (engine loaded" in text:
                return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker {self.name} exited with {self.process.returncode}:\n{text[-3000:]}"
                )
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.name} not ready after {timeout}s:\n{self.log_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9 the worker's main process; its pool process dies with it (parent-death signal)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)  # warm shutdown: the running job finishes or times out
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # the pool process, should it outlive its parent
            os.killpg(self.process.pid, signal.SIGKILL)


class Workers:
    """Starts workers on one environment and stops every one of them at the end."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.started: list[WorkerProcess] = []
        logdir.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        wait: bool = True,
        env: dict[str, str] | None = None,
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> WorkerProcess:
        """`env` overrides this pool's environment for one worker; `wrap` rewrites its command line (the
        fault suite runs a worker inside a network namespace)."""
        name = f"w{len(self.started) + 1}"
        log = self.logdir / f"{name}.log"
        queues = [self.env["GENQ_TRAIN_QUEUE"], self.env["GENQ_SAMPLE_QUEUE"]]
        command = job_worker_argv(queues, f"{name}@%h")
        environ = {**os.environ, **self.env, **(env or {})}
        with log.open("wb") as out:
            process = subprocess.Popen(
                wrap(command) if wrap else command,
                cwd=ROOT,
                env={**environ, **job_worker_env("cpu", environ=environ)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() can reach the pool process too
            )
        worker = WorkerProcess(name, process, log)
        self.started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def start_webhooks(self, timeout: float = READY_TIMEOUT) -> WorkerProcess:
        """The webhook delivery worker (`celery -A worker.webhooks worker`: threads, no torch)."""
        from worker.webhooks import worker_argv

        name = f"webhooks{len(self.started) + 1}"
        log = self.logdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                worker_argv(f"{name}@%h"), cwd=ROOT, env={**os.environ, **self.env},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        worker = WorkerProcess(name, process, log)
        self.started.append(worker)
        deadline = time.monotonic() + timeout
        while " ready." not in worker.log_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"webhook worker not ready:\n{worker.log_text()[-3000:]}")
            time.sleep(0.1)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


class JobClient:
    """Job rows written and read directly in SQL (as the API does), published by task name."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions: sessionmaker[Session] = session_factory(settings.sql_url)
        self.celery = make_celery(settings)
        with self.sessions.begin() as session:
            tenant = Tenant(name=f"worker-test-{uuid.uuid4().hex[:8]}")
            session.add(tenant)
            session.flush()
            self.tenant_id = tenant.id

    def insert(self, kind: JobKind, params: dict[str, Any], priority: int = 0) -> uuid.UUID:
        """A held job, as the API writes one (the scheduler is not woken)."""
        with self.sessions.begin() as session:
            seq = reserve_seqs(session, self.tenant_id, 1)
            job = Job(
                tenant_id=self.tenant_id,
                kind=kind,
                params=params,
                queue=queue_for(kind, self.settings),
                priority=priority,
                order_key=order_key(priority, seq),
            )
            session.add(job)
            session.flush()
            return job.id

    def publish(self, job_id: uuid.UUID) -> None:
        """Send the job's message directly, as a scheduler elsewhere would (marked first, if still held),
        or a duplicate or stray delivery."""
        with self.sessions.begin() as session:
            job_state.mark_dispatched(session, [job_id])
        job = self.get(job_id)
        sent = CeleryPublisher(self.celery, self.settings)([JobMessage(str(job_id), job.kind, job.priority)])
        assert sent == [str(job_id)]

    def wake(self) -> None:
        client = redis.Redis.from_url(self.settings.broker_url)
        try:
            wake(client, [self.settings.train_queue, self.settings.sample_queue])
        finally:
            client.close()

    def submit(self, kind: JobKind, params: dict[str, Any], priority: int = 0) -> uuid.UUID:
        """What `POST /v1/jobs` does: a held job, then the scheduler woken."""
        job_id = self.insert(kind, params, priority)
        self.wake()
        return job_id

    def get(self, job_id: uuid.UUID) -> Job:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def artifacts(self, job_id: uuid.UUID) -> dict[str, Artifact]:
        with self.sessions() as session:
            rows = session.scalars(select(Artifact).where(Artifact.job_id == job_id)).all()
            return {row.name: row for row in rows}

    def wait(self, job_id: uuid.UUID, *statuses: JobStatus, timeout: float = 60.0) -> Job:
        """Poll until the job reaches one of `statuses` (default: any terminal one)."""
        wanted = statuses or (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job.status in wanted:
                return job
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s (progress {job.progress})")

    def wait_until(self, job_id: uuid.UUID, condition: Any, timeout: float = 60.0) -> Job:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if condition(job):
                return job
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id}: condition not met after {timeout}s ({job.status}, {job.progress})")

    def close(self) -> None:
        self.celery.close()


def settings_from_env(env: dict[str, str]) -> Settings:
    """Settings as a worker with this environment sees them (not this process's environment)."""
    return Settings(**{k.removeprefix("GENQ_").lower(): v for k, v in env.items()})


@pytest.fixture()
def worker_env(service_env: dict[str, str]) -> dict[str, str]:
    return {**service_env, **FAST_RECOVERY}


@pytest.fixture()
def worker_settings(worker_env: dict[str, str], service_settings: Settings) -> Settings:
    """The workers' settings (service_settings has created the bucket)."""
    return settings_from_env(worker_env)


@pytest.fixture()
def workers(worker_env: dict[str, str], worker_settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    """Workers for one test: start them with `workers.start()`."""
    pool = Workers(worker_env, tmp_path / "worker-logs")
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture()
def jobs(worker_settings: Settings) -> Iterator[JobClient]:
    client = JobClient(worker_settings)
    yield client
    client.close()


# Module-scoped: one set of workers serves every test of a module (each started worker costs seconds).


@pytest.fixture(scope="module")
def module_env(
    postgres_url: str, redis_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Like service_env (own bucket, own queues), shared by a module's tests."""
    from shared.storage import S3Store

    env = {
        "GENQ_ENVIRONMENT": "test",
        "GENQ_DATA_DIR": str(tmp_path_factory.mktemp("worker-data")),
        "GENQ_DATABASE_URL": postgres_url,
        "GENQ_BROKER_URL": redis_url,
        "GENQ_STORAGE_BACKEND": "s3",
        "GENQ_S3_ENDPOINT_URL": s3_endpoint,
        "GENQ_S3_BUCKET": f"genq-{uuid.uuid4().hex[:12]}",
        "GENQ_S3_ACCESS_KEY_ID": "testing",
        "GENQ_S3_SECRET_ACCESS_KEY": "testing",
        "GENQ_TRAIN_QUEUE": f"genq.train.{uuid.uuid4().hex[:8]}",
        "GENQ_SAMPLE_QUEUE": f"genq.sample.{uuid.uuid4().hex[:8]}",
        **FAST_RECOVERY,
    }
    S3Store(settings_from_env(env)).ensure_bucket()
    return env


@pytest.fixture(scope="module")
def module_settings(module_env: dict[str, str]) -> Settings:
    return settings_from_env(module_env)


def shared_workers(count: int):  # type: ignore[no-untyped-def]
    """A module-scoped fixture starting `count` workers (in parallel) for the module's tests."""

    @pytest.fixture(scope="module")
    def fixture(
        module_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[list[WorkerProcess]]:
        pool = Workers(module_env, tmp_path_factory.mktemp("worker-logs"))
        try:
            started = [pool.start(wait=False) for _ in range(count)]
            for worker in started:
                worker.wait_ready()
            yield started
        finally:
            pool.stop_all()

    return fixture


@pytest.fixture()
def module_jobs(module_settings: Settings) -> Iterator[JobClient]:
    client = JobClient(module_settings)
    yield client
    client.close()
