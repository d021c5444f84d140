"""Log lines that say which job and request they belong to: JSON (python-json-logger) or plain text.

The API binds `request_id` (and `tenant_id` once the key is known) for each request; the worker binds
`job_id` and the publishing request's `request_id` when a task starts, and `tenant_id` and `attempt` once
it holds the job. Every record logged meanwhile, by any logger, carries them, so one job is followed
through the API and every worker that touched it with `grep <job id>`.

python-json-logger rather than structlog: the code logs through the standard library (`log.info("job %s
...", ...)`), as Celery, gunicorn and SQLAlchemy do, and a formatter plus a filter makes all of them JSON
without touching a call site.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

CONTEXT_FIELDS = ("request_id", "job_id", "tenant_id", "attempt")
# Never mutated: binding sets a new mapping, so a token can always restore the one before.
_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "genq_log_context", default=MappingProxyType({})
)


def bind_log_context(**fields: Any) -> contextvars.Token[Mapping[str, str]]:
    """Add fields (None: leave out) to this thread's / task's log context; returns the token to undo it."""
    merged = {**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}}
    return _context.set(merged)


def reset_log_context(token: contextvars.Token[Mapping[str, str]] | None = None) -> None:
    """Back to the context before `token` was made, or to none at all."""
    if token is not None:
        _context.reset(token)
    else:
        _context.set(MappingProxyType({}))


def log_context() -> dict[str, str]:
    return dict(_context.get())


@contextmanager
def bound_log_context(**fields: Any) -> Iterator[None]:
    token = bind_log_context(**fields)
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (an explicit `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if hasattr(record, n))
        return f"{line} [{fields}]" if fields else line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (test runners swap it), like logging.lastResort."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def make_formatter(fmt: Literal["json", "text"]) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(
            "{levelname}{name}{process}{message}",
            style="{",
            timestamp="time",
            rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        )
    return _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure_logging(fmt: Literal["json", "text"] = "json", level: int | str = logging.INFO) -> None:
    """One handler on the root logger, replacing the one an earlier call installed (calls are idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "genq", False):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.genq = True  # type: ignore[attr-defined]
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(level)
