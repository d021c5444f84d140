"""Fixtures of the fault suite: the integration suite's real services and workers, plus workers whose
connections to Postgres, Redis and S3 the test can cut, black-hole or slow (`isolate`).

Every case runs with FAST_RECOVERY (4 s leases, 1 s heartbeats and sweeps); the ones that show that a
lost message is noticed without waiting for the republish delay raise that delay (LONG_REPUBLISH) so a
pass cannot come from it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy.engine import make_url

from shared.settings import Settings
from tests.faults.network import Mode, Namespace, TcpProxy, namespaces_unavailable, remove_abandoned
from tests.integration import conftest as integration
from tests.integration.conftest import WorkerProcess, Workers

# The integration suite's fixtures, registered here too: real services, a job client.
worker_env = integration.worker_env
worker_settings = integration.worker_settings
jobs = integration.jobs

# Longer than any case runs: a job that finishes did not get there by the sweeper's republish-after delay.
LONG_REPUBLISH = {"GENQ_REQUEUE_AFTER_SECONDS": "600"}


def pause(worker: WorkerProcess) -> None:
    """SIGSTOP the worker's process group: its main process and its pool process freeze mid-step."""
    os.killpg(worker.process.pid, signal.SIGSTOP)


def resume(worker: WorkerProcess) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.process.pid, signal.SIGCONT)


class FaultWorkers(Workers):
    """Workers stopped with SIGKILL at the end: a worker left cut off or frozen by its case would sit out
    a warm shutdown, and nothing here needs one (every case has its own queues and bucket)."""

    def stop_all(self) -> None:
        for worker in self.started:
            resume(worker)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait(timeout=10)


@pytest.fixture()
def workers(worker_env: dict[str, str], worker_settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    """Workers for one case: start them with `workers.start()` (or `isolate().start(workers)`)."""
    pool = FaultWorkers(worker_env, tmp_path / "worker-logs")
    try:
        yield pool
    finally:
        pool.stop_all()


@dataclass
class ServiceProxies:
    """A TCP proxy in front of each service (Postgres, Redis, S3), listening on one address."""

    database: TcpProxy
    broker: TcpProxy
    storage: TcpProxy

    @staticmethod
    def targets(env: dict[str, str]) -> dict[str, tuple[str, int]]:
        database = make_url(env["GENQ_DATABASE_URL"])
        broker = urlsplit(env["GENQ_BROKER_URL"])
        storage = urlsplit(env["GENQ_S3_ENDPOINT_URL"])
        return {
            "database": (database.host or "127.0.0.1", database.port or 5432),
            "broker": (broker.hostname or "127.0.0.1", broker.port or 6379),
            "storage": (storage.hostname or "127.0.0.1", storage.port or 80),
        }

    @classmethod
    def open(cls, listen_host: str, env: dict[str, str], **extra: Any) -> Any:
        started: dict[str, TcpProxy] = {}
        try:
            for name, (host, port) in cls.targets(env).items():
                started[name] = TcpProxy(listen_host, host, port, name)
        except BaseException:
            for proxy in started.values():
                proxy.close()
            raise
        return cls(**started, **extra)

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """The service URLs of `base`, rewritten to go through these proxies."""
        database = make_url(base["GENQ_DATABASE_URL"]).set(host=self.database.host, port=self.database.port)
        broker = urlsplit(base["GENQ_BROKER_URL"])._replace(netloc=self.broker.address)
        storage = urlsplit(base["GENQ_S3_ENDPOINT_URL"])._replace(netloc=self.storage.address)
        return {
            "GENQ_DATABASE_URL": database.render_as_string(hide_password=False),
            "GENQ_BROKER_URL": urlunsplit(broker),
            "GENQ_S3_ENDPOINT_URL": urlunsplit(storage),
        }

    @property
    def proxies(self) -> tuple[TcpProxy, TcpProxy, TcpProxy]:
        return (self.database, self.broker, self.storage)

    def set(self, mode: Mode, *proxies: TcpProxy, delay: float = 0.0) -> float:
        """Put `proxies` (default all three) in `mode` (`delay`: seconds per chunk when slow); returns
        time.monotonic() at the change."""
        for proxy in proxies or self.proxies:
            proxy.set(mode, delay)
        return time.monotonic()

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.close()


@dataclass
class Isolated(ServiceProxies):
    """A network namespace, and the proxies through which a worker inside it reaches the services."""

    ns: Namespace

    def start(self, pool: Workers, wait: bool = True, **env: str) -> WorkerProcess:
        """A worker of `pool` inside the namespace, its services behind the proxies."""
        return pool.start(wait, env={**self.env(pool.env), **env}, wrap=self.ns.command)

    def close(self) -> None:
        super().close()
        self.ns.delete()


Isolate = Callable[[], Isolated]


@pytest.fixture(scope="session")
def namespaces() -> None:
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"cut-off cases need network namespaces: {reason}")
    remove_abandoned()


@pytest.fixture()
def isolate(namespaces: None, workers: Workers, worker_env: dict[str, str]) -> Iterator[Isolate]:
    """`isolate()` -> an Isolated namespace; its workers are stopped and it is removed at the end."""
    made: list[Isolated] = []

    def make() -> Isolated:
        ns = Namespace().create()
        try:
            isolated = Isolated.open(ns.host_ip, worker_env, ns=ns)
        except BaseException:
            ns.delete()
            raise
        made.append(isolated)
        return isolated

    try:
        yield make
    finally:
        workers.stop_all()
        for isolated in made:
            isolated.close()


@pytest.fixture()
def settings(worker_settings: Settings) -> Settings:
    return worker_settings


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.faults.recovery import MEASURED, report_lines, write_report

    if MEASURED:
        terminalreporter.section("fault suite: recovery times")
        for line in report_lines():
            terminalreporter.write_line(line)
        write_report()
