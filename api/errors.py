"""Every error the API returns is JSON: `{"error": {"code", "message", "details"}}`.

Bad input is a 4xx naming the field (`details: [{field, message}]`); anything unexpected is a 500 that
says nothing about internals (the traceback goes to the log).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, Response, jsonify
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger("genq.api")

# Union members appear in pydantic locations by type ("labels.list[constrained-int].0"); field names are
# lower snake case, so anything else in a location is a type tag and left out.
FIELD_PART = re.compile(r"[a-z_][a-z0-9_]*")
TYPE_TAGS = frozenset({"int", "str", "float", "bool", "list", "dict", "none", "uuid", "bytes"})


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}


def field_error(status: int, code: str, field: str, message: str) -> ApiError:
    """An error about one field: the message names it and the details carry it."""
    return ApiError(status, code, f"{field}: {message}", [{"field": field, "message": message}])


def not_found(what: str, value: object, field: str | None = None) -> ApiError:
    if field is None:
        return ApiError(404, "not_found", f"no {what} {value}")
    return field_error(404, "not_found", field, f"no {what} {value}")


def _join(*parts: object) -> str:
    return ".".join(str(p) for p in parts if p not in ("", None))


def _field_parts(loc: tuple[int | str, ...]) -> list[int | str]:
    return [p for p in loc if isinstance(p, int) or (FIELD_PART.fullmatch(p) and p not in TYPE_TAGS)]


def validation_details(exc: ValidationError, prefix: str = "", fields: frozenset[str] = frozenset()) -> list:
    """pydantic errors as [{field, message}], fields as dotted paths ("params.count", "items.3.kind").

    Model-level checks raise "name: message"; when `name` is one of the model's `fields`, it becomes
    the field.
    """
    details: list[dict[str, str]] = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        loc = _field_parts(error["loc"])
        head, sep, rest = message.partition(": ")
        if not loc and sep and head in fields:
            loc, message = [head], rest
        detail = {"field": _join(prefix, *loc) or "body", "message": message}
        if detail not in details:
            details.append(detail)
    return details


def validation_error(
    exc: ValidationError, prefix: str = "", fields: frozenset[str] = frozenset()
) -> ApiError:
    details = validation_details(exc, prefix, fields)
    first = details[0] if details else {"field": prefix or "body", "message": "invalid"}
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ApiError(422, "invalid_request", f"{first['field']}: {first['message']}{more}", details)


def error_response(status: int, code: str, message: str, details: list | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or []}})
    response.status_code = status
    return response


HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Response:
        return _api_error(validation_error(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = HTTP_CODES.get(status, "http_error")
        message = exc.description or exc.name
        if status == 413:
            message = "request body too large"
        details = None
        if status == 429:  # Flask-Limiter: the limit is the description; its Retry-After header is added
            code, message = "rate_limited", f"rate limit exceeded for this API key ({exc.description})"
            details = [{"field": "Authorization", "message": message}]
        response = error_response(status, code, message, details)
        allowed = getattr(exc, "valid_methods", None)
        if status == 405 and allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError) -> Response:
        log.error("database unavailable: %s", exc.orig if exc.orig is not None else exc)
        return error_response(503, "unavailable", "the database is unavailable; retry later")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the server logged the details")
