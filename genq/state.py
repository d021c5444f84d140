"""What `genq up` leaves in its data directory for the client commands and for its next start.

- `embedded.json`: the API URL, the broker URL, the supervisor's pid and its children's pids (cleared of
  pids on a clean stop; the URL stays so client commands keep finding the API).
- `api-key` (mode 0600): the default tenant's admin key, created on first start.
- `signing.secret` (mode 0600): the secret that signs local download URLs, kept across restarts.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "embedded.json"
KEY_FILE = "api-key"
SECRET_FILE = "signing.secret"
DEFAULT_API_URL = "http://127.0.0.1:8000"


def default_data_dir() -> Path:
    return Path(os.environ.get("GENQ_DATA_DIR") or ".genq")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temp, 0o600)
    temp.replace(path)


def read_state(data_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((data_dir / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_state(data_dir: Path, state: dict[str, Any]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    temp = data_dir / f".{STATE_FILE}.tmp"
    temp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    temp.replace(data_dir / STATE_FILE)


def read_key(data_dir: Path) -> str | None:
    try:
        return (data_dir / KEY_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def signing_secret(data_dir: Path) -> str:
    """The embedded system's URL-signing secret: made once, then reused so old links stay valid."""
    path = data_dir / SECRET_FILE
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    secret = secrets.token_urlsafe(48)
    write_private(path, secret + "\n")
    return secret


@dataclass(frozen=True)
class Connection:
    api_url: str
    api_key: str | None


def resolve_connection(
    api_url: str | None = None, api_key: str | None = None, data_dir: Path | None = None
) -> Connection:
    """Flag, then environment (GENQ_API_URL / GENQ_API_KEY), then the embedded system's state files."""
    data_dir = data_dir or default_data_dir()
    url = api_url or os.environ.get("GENQ_API_URL") or read_state(data_dir).get("api_url") or DEFAULT_API_URL
    key = api_key or os.environ.get("GENQ_API_KEY") or read_key(data_dir)
    return Connection(api_url=url.rstrip("/"), api_key=key)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
