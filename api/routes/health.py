"""Liveness (/healthz: the process answers) and readiness (/readyz: database, broker, storage)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from api.context import api

bp = Blueprint("health", __name__)
log = logging.getLogger("genq.api")
BROKER_TIMEOUT_SECONDS = 2.0


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


def _check_database() -> None:
    with api().sessions() as session:
        session.execute(text("SELECT 1"))


def _check_broker() -> None:
    with api().celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_SECONDS)


def _check_storage() -> None:
    api().store.check()


CHECKS = {"database": _check_database, "broker": _check_broker, "storage": _check_storage}


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    results, failed = {}, []
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:
            log.warning("readiness check %s failed: %s", name, exc)
            results[name] = "unavailable"
            failed.append(name)
    body = {"status": "ok" if not failed else "unavailable", "checks": results, "failed": failed}
    return jsonify(body), 200 if not failed else 503
