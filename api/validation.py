"""Reading requests strictly: JSON bodies, pydantic specs, ids, query parameters and headers.

Every failure is an ApiError naming the field or parameter, so bad input never reaches SQL as a 500.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from api.errors import ApiError, field_error, not_found, validation_error

MAX_JSON_BYTES = 32 * 1024 * 1024  # a 10,000-item batch is about 1-2 MB
M = TypeVar("M", bound=BaseModel)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf, which SQL JSON cannot store
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _check_strings(data: Any) -> None:
    """SQL cannot store NUL characters or lone surrogates in text: refuse them here, not as a 500."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise ValueError("NUL characters are not allowed")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("strings must be valid Unicode (no lone surrogates)") from None


def json_body() -> dict[str, Any]:
    """The request's JSON object. 415 without a JSON content type, 400 when malformed."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    request.max_content_length = MAX_JSON_BYTES
    raw = request.get_data(cache=False)
    try:
        data = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
        _check_strings(data)
    except (ValueError, RecursionError) as exc:
        message = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise ApiError(400, "malformed_json", f"malformed JSON: {message}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    return data


def parse(spec: type[M], data: Any, prefix: str = "") -> M:
    """Validate `data` with a pydantic spec; 422 naming the first bad field (prefixed by `prefix`)."""
    try:
        return spec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, prefix, frozenset(spec.model_fields)) from None


def parse_id(value: str, what: str, field: str) -> uuid.UUID:
    """A resource id from the URL; a malformed one cannot exist, so it is a 404 naming the field."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise not_found(what, repr(value)[:80], field) from None


def query_uuid(name: str) -> uuid.UUID | None:
    value = request.args.get(name)
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise field_error(400, "invalid_parameter", name, "must be a UUID") from None


def query_int(name: str, default: int, low: int, high: int) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    if not value.strip().isdigit() or len(value) > 9 or not low <= int(value) <= high:
        raise field_error(400, "invalid_parameter", name, f"must be an integer from {low} to {high}")
    return int(value)


def query_choice(name: str, choices: list[str], multiple: bool = False) -> list[str] | None:
    """A query value from `choices` (comma-separated when `multiple`); None when absent."""
    value = request.args.get(name)
    if value is None:
        return None
    values = value.split(",") if multiple else [value]
    bad = [v for v in values if v not in choices]
    if bad:
        raise field_error(400, "invalid_parameter", name, f"must be one of {', '.join(choices)}")
    return values


def query_text(name: str, max_length: int = 200) -> str | None:
    value = request.args.get(name)
    if value is not None and (len(value) > max_length or "\x00" in value):
        raise field_error(400, "invalid_parameter", name, f"must be at most {max_length} characters")
    return value


def idempotency_key() -> str | None:
    """The Idempotency-Key header: 1-200 printable ASCII characters."""
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not 1 <= len(value) <= 200 or not value.isascii() or not value.isprintable():
        raise field_error(
            400, "invalid_header", "Idempotency-Key", "must be 1 to 200 printable ASCII characters"
        )
    return value
