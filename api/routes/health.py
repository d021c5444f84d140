"""Liveness (/healthz: the process answers) and readiness (/readyz: database, broker, storage).

/readyz answers within `READY_DEADLINE_SECONDS` whatever its dependencies do: the checks run
concurrently, each in its own daemon thread, and one that has not answered by the deadline is reported
`timeout` (not ready, the dependency named). The request thread never waits longer, so probes against a
hung dependency cannot occupy gunicorn's threads. At most one check per dependency is in flight: while
one still hangs, later probes report it without starting another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text

from api.context import ApiContext, api
from api.openapi import operation
from api.schemas import Health
from api.schemas import Readiness as ReadinessView

bp = Blueprint("health", __name__)
log = logging.getLogger("genq.api")
BROKER_TIMEOUT_SECONDS = 2.0
READY_DEADLINE_SECONDS = 0.8


@bp.get("/healthz")
@operation({200: Health}, public=True)
def healthz() -> Response:
    """Liveness"""
    return jsonify({"status": "ok"})


def _check_database(context: ApiContext, _cache: dict[str, Any]) -> None:
    with context.sessions() as session:
        session.execute(text("SELECT 1"))


def _check_broker(context: ApiContext, _cache: dict[str, Any]) -> None:
    with context.celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_SECONDS)


def _check_storage(context: ApiContext, cache: dict[str, Any]) -> None:
    """S3 through a client with short timeouts and no retries (the API's own client retries, as jobs'
    uploads should); the local store is a directory and asks for nothing of the kind."""
    if context.settings.storage_backend != "s3":
        context.store.check()
        return
    from shared.storage import probe_store

    store = cache.get("probe_store")
    if store is None:
        store = cache["probe_store"] = probe_store(context.settings)
    store.check()


Check = Callable[[ApiContext, dict[str, Any]], None]  # (the app's context, this app's probe clients)
CHECKS: dict[str, Check] = {
    "database": _check_database,
    "broker": _check_broker,
    "storage": _check_storage,
}


@dataclass
class _Check:
    """One run of one check: `done` is set when it returned or raised."""

    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Readiness:
    """The checks of one app, with the runs still in flight."""

    def __init__(self, checks: dict[str, Check]) -> None:
        self.checks = checks
        self.cache: dict[str, Any] = {}
        self._running: dict[str, _Check] = {}
        self._lock = threading.Lock()

    def _start(self, name: str, context: ApiContext) -> _Check:
        with self._lock:
            current = self._running.get(name)
            if current is not None and not current.done.is_set():
                return current  # still hanging from an earlier probe: no second thread
            run = self._running[name] = _Check()

        def target() -> None:
            try:
                self.checks[name](context, self.cache)
            except BaseException as error:
                run.error = error
            finally:
                run.done.set()

        threading.Thread(target=target, name=f"genq-readyz-{name}", daemon=True).start()
        return run

    def probe(self, context: ApiContext, deadline_seconds: float) -> dict[str, str]:
        runs = {name: self._start(name, context) for name in self.checks}
        deadline = time.monotonic() + deadline_seconds
        results = {}
        for name, run in runs.items():
            if not run.done.wait(max(0.0, deadline - time.monotonic())):
                log.warning("readiness check %s: no answer within %.1fs", name, deadline_seconds)
                results[name] = "timeout"
            elif run.error is not None:
                log.warning("readiness check %s failed: %s", name, run.error)
                results[name] = "unavailable"
            else:
                results[name] = "ok"
        return results


def _readiness() -> Readiness:
    readiness = current_app.extensions.get("genq-readiness")
    if readiness is None:
        readiness = current_app.extensions.setdefault("genq-readiness", Readiness(CHECKS))
    return readiness


@bp.get("/readyz")
@operation({200: ReadinessView, 503: (ReadinessView, "not ready")}, public=True)
def readyz() -> tuple[Response, int]:
    """Readiness: database, broker, storage"""
    results = _readiness().probe(api(), READY_DEADLINE_SECONDS)
    failed = [name for name, result in results.items() if result != "ok"]
    body = {"status": "ok" if not failed else "unavailable", "checks": results, "failed": failed}
    return jsonify(body), 200 if not failed else 503
