"""Real services for the integration tests: a fresh Postgres database, a Redis database, moto's S3 server.

Postgres and Redis are expected on localhost (GENQ_TEST_POSTGRES / GENQ_TEST_REDIS override; `.ci/run`
starts them when they are down). moto's server is started here, over HTTP, and stopped at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get("GENQ_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GENQ_TEST_REDIS", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def run_alembic(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={url}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A new, migrated Postgres database for this test session, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"genq_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - environment problem, said plainly
        pytest.fail(f"Postgres at {POSTGRES_ADMIN_URL} is not reachable: {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrated = run_alembic("upgrade", "head", url=url)
    assert migrated.returncode == 0, migrated.stderr
    yield url
    from shared.db import dispose_engines

    dispose_engines(url)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:  # pragma: no cover
        pytest.fail(f"Redis at {REDIS_URL} is not reachable: {exc}")
    client.flushdb()
    client.close()
    return REDIS_URL


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server over HTTP, as a real subprocess."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture()
def service_env(postgres_url: str, redis_url: str, s3_endpoint: str, tmp_path: Path) -> dict[str, str]:
    """GENQ_* environment for a production-shaped service: Postgres, Redis, S3 (a bucket per test)."""
    return {
        "GENQ_ENVIRONMENT": "test",
        "GENQ_DATA_DIR": str(tmp_path / "data"),
        "GENQ_DATABASE_URL": postgres_url,
        "GENQ_BROKER_URL": redis_url,
        "GENQ_STORAGE_BACKEND": "s3",
        "GENQ_S3_ENDPOINT_URL": s3_endpoint,
        "GENQ_S3_BUCKET": f"genq-{uuid.uuid4().hex[:12]}",
        "GENQ_S3_ACCESS_KEY_ID": "testing",
        "GENQ_S3_SECRET_ACCESS_KEY": "testing",
        # Unique queue names: several test runs may share one Redis.
        "GENQ_TRAIN_QUEUE": f"genq.train.{uuid.uuid4().hex[:8]}",
        "GENQ_SAMPLE_QUEUE": f"genq.sample.{uuid.uuid4().hex[:8]}",
        # Tests fire requests faster than any client should; the rate-limit tests set their own limit.
        "GENQ_RATE_LIMIT": "100000/second",
    }


@pytest.fixture()
def service_settings(service_env: dict[str, str]):  # type: ignore[no-untyped-def]
    """Settings built from service_env (not from this process's environment), bucket created."""
    from shared.settings import Settings
    from shared.storage import S3Store

    settings = Settings(**{k.removeprefix("GENQ_").lower(): v for k, v in service_env.items()})
    S3Store(settings).ensure_bucket()
    return settings


@pytest.fixture(autouse=True)
def _close_database_connections() -> Iterator[None]:
    """Each test's engines are disposed when it ends: no pooled connection outlives its test to be closed
    later by the garbage collector (a ResourceWarning, an error under warnings-as-errors)."""
    yield
    from shared.db import release_connections

    release_connections()
