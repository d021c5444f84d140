"""Jinja filters for the dashboard: durations, sizes, and the scalar part of a metrics document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def duration(seconds: float | None) -> str:
    """'45 s', '3 min 20 s', '2 h 05 min'; an em dash when unknown."""
    if seconds is None:
        return "—"
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "—"
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def scalars(metrics: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The metrics worth a table row: numbers and short strings (matrices and per-class maps stay in the
    JSON API)."""
    rows = []
    for name, value in (metrics or {}).items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float):
            rows.append((name, f"{value:.4g}"))
        elif isinstance(value, int) or (isinstance(value, str) and len(value) <= 80):
            rows.append((name, str(value)))
    return rows


def ordinal_position(position: int | None) -> str:
    """Queue position as people say it: 0 jobs ahead is 'next'."""
    if position is None:
        return "—"
    return "next" if position == 0 else f"{position} ahead"


FILTERS = {"duration": duration, "size": size, "scalars": scalars, "queue_place": ordinal_position}
