"""Shared setup for the service benchmarks: the real services a production genq runs on, started (or
borrowed) for one run and cleaned up after it.

- Postgres: a fresh database on the local server, migrated with Alembic, dropped at the end.
- Redis: the local server, database 14 (GENQ_BENCH_REDIS overrides), queue names unique to the run;
  only this run's keys are deleted at the end.
- S3: moto's server over HTTP, a subprocess, with a bucket of its own.
- genq workers: `celery -A worker.celery_app worker -c 1` subprocesses, started with the integration
  tests' helpers (tests/integration/conftest.py), stopped at the end.

Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

from shared.db import dispose_engines, session_factory
from shared.settings import Settings
from shared.storage import S3Store
from shared.tenants import create_api_key, create_tenant
from tests.conftest import POSTGRES_ADMIN_URL, free_port, run_alembic, wait_for_port
from tests.integration.conftest import WorkerProcess, Workers, settings_from_env

BENCH_REDIS_URL = os.environ.get("GENQ_BENCH_REDIS", "redis://127.0.0.1:6379/14")
TERMINAL = ("succeeded", "failed", "canceled")


# ---------------------------------------------------------------------------------------------------
# Numbers


@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p99: float
    mean: float

    def ms(self) -> str:
        return f"p50 {self.p50 * 1e3:7.1f} ms  p99 {self.p99 * 1e3:7.1f} ms  mean {self.mean * 1e3:7.1f} ms"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float]) -> Summary:
    return Summary(len(values), percentile(values, 50), percentile(values, 99), sum(values) / len(values))


def machine_line() -> str:
    """Cores, load average and GPU presence: the bench shares a small machine with other work."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    gpu = "a GPU (nvidia-smi present)" if shutil.which("nvidia-smi") else "no GPU"
    return f"{os.cpu_count()} cores, {gpu}, load average {load} (1/5/15 min)"


# ---------------------------------------------------------------------------------------------------
# Services


@dataclass
class Services:
    """One run's services: the GENQ_* environment every genq process gets, and what to clean up."""

    env: dict[str, str]
    settings: Settings
    workdir: Path
    broker: redis.Redis
    workers: Workers
    extra_queues: list[str] = field(default_factory=list)  # queues of this run besides genq's two
    extra_keys: list[str] = field(default_factory=list)  # other Redis keys of this run

    def start_workers(self, count: int = 1) -> list[WorkerProcess]:
        """genq workers on both queues, not waited for: `wait_ready()` each (the engine loads in seconds)."""
        return [self.workers.start(wait=False) for _ in range(count)]

    def redis_keys(self) -> list[bytes]:
        keys: list[bytes] = []
        for queue in (self.settings.train_queue, self.settings.sample_queue, *self.extra_queues):
            keys += self.broker.keys(f"{queue}*") + self.broker.keys(f"_kombu.binding*.{queue}")
        return keys + [k.encode() for k in self.extra_keys]


def _create_database() -> str:
    name = f"genq_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrated = run_alembic("upgrade", "head", url=url)
    if migrated.returncode != 0:
        _drop_database(url)
        raise RuntimeError(f"alembic upgrade failed:\n{migrated.stderr[-3000:]}")
    return url


def _drop_database(url: str) -> None:
    dispose_engines(url)
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=process)
    except Exception:
        process.kill()
        process.wait(timeout=10)
        raise
    return process, f"http://127.0.0.1:{port}"


def _delete_keys(found: Services) -> None:
    keys = found.redis_keys()
    if keys:
        found.broker.delete(*keys)


@contextlib.contextmanager
def services(overrides: dict[str, str] | None = None) -> Iterator[Services]:
    """Start moto, create and migrate a database, pick queues; on exit stop workers and undo it all."""
    run = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix=f"genq-bench-{run}-"))
    broker = redis.Redis.from_url(BENCH_REDIS_URL)
    broker.ping()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        cleanup.callback(broker.close)
        moto, endpoint = _start_moto()
        cleanup.callback(lambda: (moto.terminate(), moto.wait(timeout=10)))
        database_url = _create_database()
        cleanup.callback(_drop_database, database_url)
        env = {
            "GENQ_ENVIRONMENT": "test",
            "GENQ_DATA_DIR": str(workdir / "data"),
            "GENQ_DATABASE_URL": database_url,
            "GENQ_BROKER_URL": BENCH_REDIS_URL,
            "GENQ_STORAGE_BACKEND": "s3",
            "GENQ_S3_ENDPOINT_URL": endpoint,
            "GENQ_S3_BUCKET": f"genq-bench-{run}",
            "GENQ_S3_ACCESS_KEY_ID": "bench",
            "GENQ_S3_SECRET_ACCESS_KEY": "bench",
            "GENQ_TRAIN_QUEUE": f"genq.bench.{run}.train",
            "GENQ_SAMPLE_QUEUE": f"genq.bench.{run}.sample",
            "GENQ_TORCH_THREADS": "1",
            "GENQ_DEVICE": "cpu",
            **(overrides or {}),
        }
        settings = settings_from_env(env)
        S3Store(settings).ensure_bucket()
        found = Services(env, settings, workdir, broker, Workers(env, workdir / "worker-logs"))
        cleanup.callback(_delete_keys, found)
        cleanup.callback(found.workers.stop_all)
        yield found


# ---------------------------------------------------------------------------------------------------
# A tenant and a model


@dataclass(frozen=True)
class ApiTenant:
    id: uuid.UUID
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_tenant(settings: Settings, name: str = "bench") -> ApiTenant:
    """A tenant and an API key, created the way the admin command does."""
    with session_factory(settings.sql_url).begin() as session:
        tenant = create_tenant(session, f"{name}-{uuid.uuid4().hex[:8]}")
        _, key = create_api_key(session, tenant.id, "bench")
        return ApiTenant(tenant.id, key)


# A VAE on the built-in digits, a few steps wide 8: trains in seconds, generates in milliseconds.
TINY_VAE = {
    "family": "vae",
    "dataset": "digits",
    "name": "bench-vae",
    "options": {"max_steps": 5, "width": 8, "latent_dim": 8, "batch_size": 16},
}


def wait_for_job(read: Callable[[], dict[str, Any]], timeout: float, interval: float = 0.2) -> dict[str, Any]:
    """Poll `read()` (a job view) until the job is terminal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = read()
        if job["status"] in TERMINAL:
            return job
        time.sleep(interval)
    raise TimeoutError(f"job still {job['status']} after {timeout:.0f}s (progress {job.get('progress')})")


def train_tiny_model(post: Callable[..., Any], get: Callable[..., Any], tenant: ApiTenant) -> str:
    """Train TINY_VAE through the API (`post`/`get`: a Flask test client's or a requests session's)
    on whatever workers run; returns the registered model's id."""
    response = post("/v1/jobs", json={"kind": "train", "params": TINY_VAE}, headers=tenant.headers)
    body = response.json() if callable(response.json) else response.json
    if response.status_code != 202:
        raise RuntimeError(f"training submit refused: {response.status_code} {body}")

    def read() -> dict[str, Any]:
        reply = get(f"/v1/jobs/{body['id']}", headers=tenant.headers)
        return reply.json() if callable(reply.json) else reply.json

    job = wait_for_job(read, timeout=120)
    if job["status"] != "succeeded":
        raise RuntimeError(f"training failed: {job.get('error')}")
    return job["result"]["model_id"]
