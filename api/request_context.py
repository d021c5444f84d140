"""Request ids: `X-Request-ID` honoured (or made), returned, bound into every log line of the request and
stored on the jobs it submits (api/submission.py), whose messages carry it to the worker's log lines."""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from shared.logging import bind_log_context, reset_log_context

log = logging.getLogger("genq.api.access")
REQUEST_ID_HEADER = "X-Request-ID"
# What a proxy or client may send: a uuid, a trace id, a short token. Anything else is replaced.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_from(header: str | None) -> str:
    if header and VALID_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def install_request_context(app: Flask) -> None:
    """Register before auth, so a rejected request's log lines carry its id too."""

    @app.before_request
    def _begin() -> None:
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        g.log_token = bind_log_context(request_id=g.request_id)
        g.request_started = time.perf_counter()

    @app.after_request
    def _answer(response: Response) -> Response:
        if "request_id" in g:
            response.headers[REQUEST_ID_HEADER] = g.request_id
            took = time.perf_counter() - g.get("request_started", time.perf_counter())
            log.info(
                "%s %s %d", request.method, request.path, response.status_code,
                extra={"status": response.status_code, "duration_ms": round(took * 1000, 1)},
            )  # fmt: skip
        return response

    @app.teardown_request
    def _end(_exc: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            with contextlib.suppress(ValueError):  # made in another context: nothing of ours to undo
                reset_log_context(token)


def bind_tenant_to_logs() -> None:
    """A before_request hook registered after auth: the tenant is known from here on."""
    if "tenant_id" in g:
        bind_log_context(tenant_id=g.tenant_id)
