"""The pieces of `genq up` that need no servers: its environment, its commands, supervised children,
ports, the files it keeps (its import boundary: test_client_install.py)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from genq.embedded import EmbeddedConfig, api_command, embedded_environment
from genq.processes import MAX_RESTARTS_IN_WINDOW, Child, port_is_free
from genq.state import pid_alive, signing_secret


def test_environment_points_children_at_the_embedded_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GENQ_SIGNING_SECRET", raising=False)
    config = EmbeddedConfig(data_dir=tmp_path / "d", port=8123, workers=2, broker_port=6555)
    env = embedded_environment(config)
    assert env["GENQ_DATA_DIR"] == str((tmp_path / "d").resolve())
    assert env["GENQ_BROKER_URL"] == "redis://127.0.0.1:6555/0"
    assert env["GENQ_PUBLIC_BASE_URL"] == "http://127.0.0.1:8123"
    # The signing secret is made once per data dir, private, and reused on the next start.
    assert env["GENQ_SIGNING_SECRET"] == signing_secret((tmp_path / "d").resolve())
    assert ((tmp_path / "d") / "signing.secret").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("GENQ_SIGNING_SECRET", "from-the-environment")
    assert embedded_environment(config)["GENQ_SIGNING_SECRET"] == "from-the-environment"
    # Webhooks to local http receivers are this machine's user's own business; an explicit value wins.
    assert env["GENQ_WEBHOOK_ALLOW_HTTP"] == env["GENQ_WEBHOOK_ALLOW_PRIVATE"] == "true"
    monkeypatch.setenv("GENQ_WEBHOOK_ALLOW_PRIVATE", "false")
    assert embedded_environment(config)["GENQ_WEBHOOK_ALLOW_PRIVATE"] == "false"


def test_commands() -> None:
    api = api_command(EmbeddedConfig(data_dir=Path("x"), port=9999))
    assert "127.0.0.1:9999" in api and api[-1] == "api.wsgi:app"
    assert EmbeddedConfig(data_dir=Path("x"), host="0.0.0.0", port=1).api_url == "http://127.0.0.1:1"


def test_a_child_is_restarted_within_limits(tmp_path: Path) -> None:
    child = Child("sleeper", [sys.executable, "-c", "import time; time.sleep(30)"], {}, tmp_path / "c.log")
    child.start()
    try:
        assert child.exit_code() is None and pid_alive(child.pid)
        assert all(child.may_restart() for _ in range(MAX_RESTARTS_IN_WINDOW))
        assert not child.may_restart()  # a crash loop stops genq instead
    finally:
        child.stop(timeout=5)
    assert child.exit_code() is not None
    assert "starting sleeper" in child.log_tail()


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
        "time.sleep(30)"
    )
    child = Child("stubborn", [sys.executable, "-c", stubborn], {}, tmp_path / "s.log")
    child.start()
    deadline = time.monotonic() + 10
    while child.log_tail().splitlines()[-1:] != ["up"] and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    child.stop(timeout=0.5)
    assert child.exit_code() == -9 and time.monotonic() - started < 5


def test_port_is_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
    assert port_is_free("127.0.0.1", port)
