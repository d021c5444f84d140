"""Supervised child processes for `genq up`: start in their own process group, stop a whole group, restart
with a limit, and find ports that are free.

Each child gets its own session, so Ctrl-C in the terminal reaches only the supervisor, which then stops
everything in order (workers, API, broker last). Stopping signals the whole group: a Celery worker's pool
process goes with it instead of being left running a job.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

RESTART_WINDOW_SECONDS = 300.0
MAX_RESTARTS_IN_WINDOW = 5


def port_is_free(host: str, port: int) -> bool:
    """True when a server could bind (host, port) now (SO_REUSEADDR, as Redis and gunicorn bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux: the child gets SIGTERM if the supervisor dies without stopping it (kill -9, a crash).
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def signal_group(pid: int, sig: int) -> None:
    """Signal a child's process group (it leads its own session), or the pid alone if it has none."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def stop_pid(pid: int, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Signal a process group, wait up to `timeout`, then SIGKILL it."""
    from genq.state import pid_alive

    signal_group(pid, sig)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        signal_group(pid, signal.SIGKILL)


class Child:
    """One supervised process: its command, environment and log file, and its restart history."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts: deque[float] = deque()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n--- genq: starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def exit_code(self) -> int | None:
        """None while running; the exit status once it ended."""
        return None if self.process is None else self.process.poll()

    def may_restart(self) -> bool:
        """At most MAX_RESTARTS_IN_WINDOW restarts in RESTART_WINDOW_SECONDS; a crash loop stops genq."""
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_SECONDS:
            self.restarts.popleft()
        if len(self.restarts) >= MAX_RESTARTS_IN_WINDOW:
            return False
        self.restarts.append(now)
        return True

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM to it alone): a Celery worker lets its pool process finish the
        current job (warm shutdown), gunicorn lets its workers finish their requests."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        """Wait until `deadline` (monotonic) for the child to exit, then SIGKILL its group."""
        if self.process is None:
            return
        while self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        # Anything of its group that outlived it (a pool process) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self, timeout: float) -> None:
        self.terminate()
        self.wait_or_kill(time.monotonic() + timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
