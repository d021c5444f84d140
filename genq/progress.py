"""What `genq` shows about a job or a batch: a one-line summary (`genq status`, `genq jobs`), and tqdm's
bar under it while a command waits. The bar is drawn in place on a terminal and not at all when the
output is not one (a log, a pipe), where only the command's result lines are written.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from tqdm import tqdm

from genq.client import batch_finished

BAR_FORMAT = "|{bar:28}| {desc}  [{elapsed}]"


def format_duration(seconds: float | None) -> str:
    """`75` -> `01:15`, `3725` -> `1:02:05` (tqdm's format); None or negative -> `?`."""
    return "?" if seconds is None or seconds < 0 else tqdm.format_interval(seconds)


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
    return min(1.0, max(fraction, budget[0] if budget else 0.0))


def job_eta(job: Mapping[str, Any]) -> float | None:
    eta = (job.get("progress") or {}).get("eta_seconds")
    budget = time_budget(job)
    if budget is None:
        return eta
    return budget[1] if eta is None else min(eta, budget[1])


def job_line(job: Mapping[str, Any]) -> str:
    """`running    train  1200/5000   24.0%  eta 03:10`, or the queue position while queued."""
    status = str(job.get("status", "?"))
    parts = [f"{status:<9}"]
    if status == "queued" and job.get("queue_position") is not None:
        parts.append(f"position {job['queue_position']}")
        return "  ".join(parts)
    progress = job.get("progress") or {}
    if progress.get("phase"):
        parts.append(str(progress["phase"]))
    if progress.get("step") is not None and progress.get("total"):
        parts.append(f"{progress['step']}/{progress['total']}")
    parts.append(f"{job_fraction(job) * 100:5.1f}%")
    eta = job_eta(job)
    if status == "running" and eta is not None:
        parts.append(f"eta {format_duration(eta)}")
    return "  ".join(parts)


def batch_total(batch: Mapping[str, Any]) -> int:
    counts = batch.get("counts") or {}
    return int(batch.get("total") or sum(int(v) for v in counts.values() if isinstance(v, int | float)))


def batch_line(batch: Mapping[str, Any]) -> str:
    """`412/1000 done  succeeded 410  failed 2  running 2  queued 586`."""
    counts = batch.get("counts") or {}
    parts = [f"{batch_finished(batch)}/{batch_total(batch)} done"]
    parts += [
        f"{status} {counts[status]}"
        for status in ("succeeded", "failed", "canceled", "canceling", "running", "queued")
        if counts.get(status)
    ]
    return "  ".join(parts)


class ProgressBar:
    """tqdm's bar for one job or batch, its summary line beside it; silent when `stream` is no terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self._bar: tqdm | None = None

    def show_job(self, job: Mapping[str, Any]) -> None:
        self._show(job_fraction(job) * 100, 100, job_line(job))

    def show_batch(self, batch: Mapping[str, Any]) -> None:
        self._show(batch_finished(batch), batch_total(batch), batch_line(batch))

    def _show(self, done: float, total: float, text: str) -> None:
        if self._bar is None:
            # disable=None: tqdm draws only when the stream is a terminal.
            self._bar = tqdm(total=total, file=self.stream, bar_format=BAR_FORMAT, disable=None)
        self._bar.total = total
        self._bar.n = done
        self._bar.set_description_str(text)  # redraws

    def close(self) -> None:
        """Leave the final state on its own line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
