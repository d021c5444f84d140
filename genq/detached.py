"""`genq up --detach` and `genq down`: the embedded system as a background process of its own."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from genq.params import CommandError
from genq.state import pid_alive, read_state

if TYPE_CHECKING:
    from genq.embedded import EmbeddedConfig


def up_command(config: EmbeddedConfig) -> list[str]:
    return [
        sys.executable, "-m", "genq.main", "up",
        "--data-dir", str(config.data_dir),
        "--port", str(config.port),
        "--host", config.host,
        "--workers", str(config.workers),
        "--broker-port", str(config.broker_port),
    ]  # fmt: skip


def start_detached(config: EmbeddedConfig, timeout: float = 180.0) -> subprocess.Popen[bytes]:
    """Start `genq up` in its own session (output in <data-dir>/logs/up.log) and wait until it is ready."""
    data_dir = config.data_dir.resolve()
    log_path = data_dir / "logs" / "up.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            up_command(config),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(data_dir)
        if state.get("ready") and state.get("pid") == process.pid:
            return process
        if process.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise CommandError(f"genq up exited with {process.returncode}:\n{tail}")
        time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    raise CommandError(f"genq up was not ready after {timeout:g}s; see {log_path}")


def stop_running(data_dir: Path, timeout: float = 60.0) -> bool:
    """SIGTERM the supervisor recorded in the data dir and wait for it; False if none was running."""
    pid = read_state(data_dir.resolve()).get("pid")
    if not pid or not pid_alive(pid):
        return False
    from genq.processes import cmdline

    if "up" not in cmdline(pid):
        return False  # the pid now belongs to something else
    import os

    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise CommandError(f"genq up (pid {pid}) did not stop within {timeout:g}s")
        time.sleep(0.2)
    return True
