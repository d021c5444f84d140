"""The API as production runs it: gunicorn, several worker processes sharing one Prometheus multiprocess
directory, JSON logs to a file. Started on a free port, stopped (SIGTERM, then SIGKILL) at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.conftest import ROOT, free_port, wait_for_port

START_TIMEOUT = 120.0  # gunicorn's processes import Flask, SQLAlchemy, boto3: slow on a busy machine


@dataclass
class ApiServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=10).status_code == 200
    except requests.RequestException:  # processes still booting
        return False


@contextlib.contextmanager
def running_api(env: dict[str, str], workdir: Path, processes: int = 2) -> Iterator[ApiServer]:
    multiproc = workdir / "prometheus"
    multiproc.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "api.log"
    command = [
        sys.executable, "-m", "gunicorn", f"--bind=127.0.0.1:{port}", f"--workers={processes}",
        "--threads=4", "--worker-class=gthread", "--timeout=120", "--no-control-socket", "api.wsgi:app",
    ]  # fmt: skip
    full_env = {
        **os.environ, **env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "GENQ_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
    }  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = ApiServer(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_for_port(port, timeout=START_TIMEOUT, process=process)
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy(server.url):
            assert time.monotonic() < deadline, server.log_text()[-3000:]
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
