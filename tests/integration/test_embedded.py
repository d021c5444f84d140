"""`genq up` as a real process: broker, migrations, API and a worker on one machine; a tiny training job
runs to the end; everything stops on SIGTERM and a second start finds the job, its files, the key and
the broker's data again."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from genq.client import GenqClient
from genq.commands import download_job, wait_for
from genq.progress import ProgressBar
from genq.state import pid_alive, read_key, read_state
from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(170)]

TINY_TRAIN = {"family": "cnn", "dataset": "digits", "options": {"max_steps": 10, "width": 8}}


class Embedded:
    """One `genq up` process and what it recorded; stop() leaves nothing running, whatever happened."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.broker_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / "up.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
        env["GENQ_LEASE_SECONDS"] = "20"
        env["GENQ_HEARTBEAT_SECONDS"] = "2"
        command = [
            sys.executable, "-m", "genq.main", "up", "--workers", "1", "--data-dir", str(self.data_dir),
            "--port", str(self.port), "--broker-port", str(self.broker_port),
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = read_state(self.data_dir)
            if state.get("ready") and state.get("pid") == self.process.pid:
                return
            assert self.process.poll() is None, f"genq up exited early:\n{self.log.read_text()}"
            time.sleep(0.2)
        raise AssertionError(f"genq up not ready after {timeout}s:\n{self.log.read_text()}")

    def children(self) -> list[int]:
        return [entry["pid"] for entry in (read_state(self.data_dir).get("children") or {}).values()]

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM the supervisor; if it hangs, kill it and every child it recorded."""
        if self.process is None:
            return None
        children = self.children()
        code = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pid in children:
            if pid_alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self.process = None
        return code


@pytest.fixture()
def embedded(tmp_path: Path) -> Iterator[Embedded]:
    system = Embedded(tmp_path / "genq-data")
    try:
        yield system
    finally:
        system.stop()


def test_up_runs_a_job_stops_cleanly_and_keeps_everything(embedded: Embedded, tmp_path: Path) -> None:
    started = time.monotonic()
    embedded.start()
    assert requests.get(f"{embedded.url}/readyz", timeout=5).status_code == 200
    key = read_key(embedded.data_dir.resolve())
    assert key and (embedded.data_dir / "api-key").stat().st_mode & 0o777 == 0o600
    client = GenqClient(embedded.url, key)
    job_id = client.submit_job("train", TINY_TRAIN)["id"]
    assert wait_for(client, "job", job_id, io.StringIO(), timeout=90, bar=ProgressBar(io.StringIO())) == 0
    broker = redis.Redis(port=embedded.broker_port)
    broker.set("genq-test-marker", "kept")
    broker.close()

    children = embedded.children()
    assert len(children) == 4  # API, one worker, the webhook worker, broker
    assert embedded.stop() == 0
    assert not any(pid_alive(pid) for pid in children), "a child outlived genq up"
    assert "ready" not in read_state(embedded.data_dir)

    embedded.start()
    assert read_key(embedded.data_dir.resolve()) == key  # the saved key still works: no new one
    job = GenqClient(embedded.url, key).get_job(job_id)
    assert job["status"] == "succeeded" and job["model_id"]
    paths = download_job(GenqClient(embedded.url, key), job, tmp_path / "out")  # sha256 checked
    assert {p.name for p in paths} >= {"model.pt", "grid.png"}
    broker = redis.Redis(port=embedded.broker_port)
    assert broker.get("genq-test-marker") == b"kept"  # the append-only file was replayed
    broker.close()
    assert embedded.stop() == 0
    assert time.monotonic() - started < 150
