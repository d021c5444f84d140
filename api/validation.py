"""Reading requests strictly: JSON bodies, pydantic specs, ids, and the types of query parameters and
headers (their models are in api/schemas.py; api/openapi.py reads them with `parameters`).

Every failure is an ApiError naming the field or parameter, so bad input never reaches SQL as a 500.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from flask import request
from pydantic import BaseModel, PlainValidator, ValidationError, WithJsonSchema

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


def _integer(text: str, low: int, high: int) -> int:
    if not text.strip().isdigit() or len(text) > 9 or not low <= int(text) <= high:
        raise ValueError(f"must be an integer from {low} to {high}")
    return int(text)


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ValueError("must be a UUID") from None


def _typed(python: Any, check: Callable[[str], Any], schema: dict[str, Any]) -> Any:
    """A query or header type: `check` reads the raw text (its ValueError is the message the client
    reads), `schema` is how the OpenAPI document describes it."""
    return Annotated[python, PlainValidator(lambda value: check(str(value))), WithJsonSchema(schema)]


def integer(low: int, high: int, description: str = "") -> Any:
    schema = {"type": "integer", "minimum": low, "maximum": high}
    return _typed(
        int,
        lambda text: _integer(text, low, high),
        schema | ({"description": description} if description else {}),
    )


def choices(values: list[str]) -> Any:
    """Comma-separated values, each one of `values`."""

    def check(text: str) -> list[str]:
        if any(v not in values for v in text.split(",")):
            raise ValueError(f"must be one of {', '.join(values)}")
        return text.split(",")

    return _typed(
        list[str], check, {"type": "string", "description": f"comma-separated: {', '.join(values)}"}
    )


def text(max_length: int) -> Any:
    def check(value: str) -> str:
        if len(value) > max_length or "\x00" in value:
            raise ValueError(f"must be at most {max_length} characters")
        return value

    return _typed(str, check, {"type": "string", "maxLength": max_length})


def _idempotency_key(value: str) -> str:
    if not 1 <= len(value) <= 200 or not value.isascii() or not value.isprintable():
        raise ValueError("must be 1 to 200 printable ASCII characters")
    return value


Uuid = _typed(uuid.UUID, _uuid, {"type": "string", "format": "uuid"})
IdempotencyKey = _typed(str, _idempotency_key, {"type": "string", "minLength": 1, "maxLength": 200})


def parameters(model: type[M], values: Mapping[str, str], code: str) -> M:
    """Query parameters or headers read with `model`; a 400 naming the first bad one."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        message = error["msg"].removeprefix("Value error, ")
        raise field_error(400, code, str(error["loc"][0]) if error["loc"] else "query", message) from None


def query_uuid(name: str) -> uuid.UUID | None:
    value = request.args.get(name)
    if value is None:
        return None
    try:
        return _uuid(value)
    except ValueError as exc:
        raise field_error(400, "invalid_parameter", name, str(exc)) from None


def query_int(name: str, default: int, low: int, high: int) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    try:
        return _integer(value, low, high)
    except ValueError as exc:
        raise field_error(400, "invalid_parameter", name, str(exc)) from None
