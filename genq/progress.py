"""A terminal progress bar for jobs and batches.

On a terminal the bar redraws one line in place; in a log (not a TTY) it prints a new line only when the
text changed and at most every `log_interval` seconds, so `genq wait` in CI stays readable.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from genq.client import batch_finished

BAR_WIDTH = 28


def format_duration(seconds: float | None) -> str:
    """`75` -> `1m15s`; `3725` -> `1h02m`; None or negative -> `?`."""
    if seconds is None or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def time_budget(job: Mapping[str, Any], now: dt.datetime | None = None) -> tuple[float, float] | None:
    """(fraction used, seconds left) of a running job's time budget (`params.max_seconds`), or None.

    A training run with a budget stops when the budget or the step count runs out, whichever comes
    first; its step total alone would show 20% the moment it ends."""
    budget = (job.get("params") or {}).get("max_seconds")
    started = job.get("started_at")
    if job.get("status") != "running" or not isinstance(budget, int | float) or budget <= 0 or not started:
        return None
    try:
        start = dt.datetime.fromisoformat(str(started))
    except ValueError:
        return None
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.UTC)
    elapsed = ((now or dt.datetime.now(dt.UTC)) - start).total_seconds()
    return min(1.0, max(0.0, elapsed / budget)), max(0.0, budget - elapsed)


def job_fraction(job: Mapping[str, Any]) -> float:
    """0..1 from a job's progress (`percent` 0..100, else step/total, or its time budget if further
    along); 1 once it succeeded."""
    if job.get("status") == "succeeded":
        return 1.0
    progress = job.get("progress") or {}
    percent = progress.get("percent")
    step, total = progress.get("step"), progress.get("total")
    fraction = 0.0
    if isinstance(percent, int | float):
        fraction = percent / 100.0
    elif isinstance(step, int | float) and isinstance(total, int | float) and total > 0:
        fraction = step / total
    budget = time_budget(job)
    return max(fraction, budget[0]) if budget else fraction


def job_eta(job: Mapping[str, Any]) -> float | None:
    eta = (job.get("progress") or {}).get("eta_seconds")
    budget = time_budget(job)
    if budget is None:
        return eta
    return budget[1] if eta is None else min(eta, budget[1])


def job_line(job: Mapping[str, Any]) -> str:
    """`running  train 1200/5000  24.0%  eta 3m10s`, or the queue position while queued."""
    status = str(job.get("status", "?"))
    fraction = job_fraction(job)
    parts = [format_bar(fraction), f"{status:<9}"]
    if status == "queued" and job.get("queue_position") is not None:
        parts.append(f"position {job['queue_position']}")
        return "  ".join(parts)
    progress = job.get("progress") or {}
    if progress.get("phase"):
        parts.append(str(progress["phase"]))
    if progress.get("step") is not None and progress.get("total"):
        parts.append(f"{progress['step']}/{progress['total']}")
    parts.append(f"{fraction * 100:5.1f}%")
    eta = job_eta(job)
    if status == "running" and eta is not None:
        parts.append(f"eta {format_duration(eta)}")
    return "  ".join(parts)


def batch_counts(batch: Mapping[str, Any]) -> dict[str, int]:
    counts = batch.get("counts") or {}
    return {str(k): int(v) for k, v in counts.items() if isinstance(v, int | float)}


def batch_line(batch: Mapping[str, Any]) -> str:
    """`[####....]  412/1000 done  succeeded 410  failed 2  running 2  queued 586`."""
    counts = batch_counts(batch)
    total = int(batch.get("total") or sum(counts.values()) or 0)
    done = batch_finished(batch)
    fraction = done / total if total else 0.0
    parts = [format_bar(fraction), f"{done}/{total} done"]
    for status in ("succeeded", "failed", "canceled", "canceling", "running", "queued"):
        if counts.get(status):
            parts.append(f"{status} {counts[status]}")
    return "  ".join(parts)


class ProgressBar:
    """One status line, redrawn in place on a terminal, throttled in logs."""

    def __init__(self, stream: TextIO | None = None, log_interval: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_interval = log_interval
        self._last_text = ""
        self._logged_text = ""
        self._last_logged = float("-inf")
        self._width = 0

    def update(self, text: str) -> None:
        if self.is_tty:
            padding = " " * max(0, self._width - len(text))
            self.stream.write("\r" + text + padding)
            self._width = len(text)
            self.stream.flush()
        elif text != self._last_text and time.monotonic() - self._last_logged >= self.log_interval:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._logged_text = text
            self._last_logged = time.monotonic()
        self._last_text = text

    def close(self, text: str | None = None) -> None:
        """Leave the final state on its own line."""
        final = text if text is not None else self._last_text
        if self.is_tty:
            self.update(final)
            self.stream.write("\n")
        elif final and final != self._logged_text:
            self.stream.write(final + "\n")
            self._logged_text = final
        self.stream.flush()
        self._width = 0
