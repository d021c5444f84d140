"""Turning command-line flags into job params: `--params JSON|@file`, `--option key=value`, id ranges;
and the two errors a command reports in one line instead of a traceback.

The API validates everything (with the same schemas the worker uses); these helpers only build the JSON
and say clearly which flag was malformed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class UsageError(ValueError):
    """A malformed flag value; the message names the flag."""


class CommandError(RuntimeError):
    """A command was refused or cannot go on (no such tenant, a port in use, a missing extra); the
    message says why and what to do."""


def load_json_arg(value: str, flag: str) -> Any:
    """`{"a": 1}` inline, `@file.json` from a file, `@-` from stdin."""
    text = value
    if value.startswith("@"):
        source = value[1:]
        try:
            if source == "-":
                import sys

                text = sys.stdin.read()
            else:
                text = Path(source).read_text()
        except OSError as exc:
            raise UsageError(f"{flag}: cannot read {source}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{flag}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from exc


def parse_scalar(text: str) -> Any:
    """`64` -> 64, `true` -> True, `0.5` -> 0.5, `[1,2]` -> [1, 2]; anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(pairs: list[str] | None, flag: str = "--option") -> dict[str, Any]:
    """`["latent_dim=64", "conditional=true"]` -> `{"latent_dim": 64, "conditional": True}`."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag}: expected key=value, got {pair!r}")
        options[key.strip()] = parse_scalar(value.strip())
    return options


def parse_int_list(text: str, flag: str, limit: int = 100_000) -> list[int]:
    """`0-99`, `3,5,8`, `0-9,20-29` -> a list of ints (ranges inclusive; ids here are never negative)."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                first, last = part.split("-", 1)
                start, end = int(first), int(last)
                if end < start:
                    raise UsageError(f"{flag}: range {part!r} runs backwards")
                values.extend(range(start, end + 1))
            else:
                values.append(int(part))
        except ValueError as exc:
            raise UsageError(f"{flag}: expected numbers or ranges like 0-99, got {part!r}") from exc
        if len(values) > limit:
            raise UsageError(f"{flag}: more than {limit} values")
    if not values:
        raise UsageError(f"{flag}: no values given")
    return values


def merge_params(base: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """`base` (from --params) overlaid with the flags that were given (None means not given).

    A nested dict in flags (options, source) is merged key by key rather than replacing the base's."""
    merged = dict(base)
    for key, value in flags.items():
        if value is None:
            continue
        if isinstance(value, dict):
            inner = dict(merged.get(key) or {})
            inner.update({k: v for k, v in value.items() if v is not None})
            if inner:
                merged[key] = inner
        else:
            merged[key] = value
    return merged


def base_params(value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    params = load_json_arg(value, "--params")
    if not isinstance(params, dict):
        raise UsageError("--params: expected a JSON object")
    return params
