"""Progress from the engine to the job row, at most one write per `interval` seconds.

The engine reports every step (thousands a second for tiny models); the row gets
`{phase, step, total, metrics, started_at}` a few times a second, plus the last report of each phase and
a final flush, so the API's percent and ETA are never far behind. Each write is fenced on the attempt and
hands the job's status back, which refreshes the cancel flag.

A failed write does not fail the job, but it is not ignored either: it goes to `on_error` (the lease
keeper counts it against the lease), and the writer backs off (doubling up to `MAX_BACKOFF_SECONDS`) so
a step loop whose database is gone is not held up by a write attempt at every interval.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from shared.models import JobStatus, utcnow

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 8.0


class ProgressReport(Protocol):  # worker.engine.runtime.Progress
    phase: str
    step: int
    total: int
    metrics: dict[str, float]


def json_safe(value: Any) -> Any:
    """Floats that JSON (and Postgres JSONB) can store: NaN and infinities become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class ProgressWriter:
    def __init__(
        self,
        write: Callable[[dict[str, Any]], JobStatus | None],
        interval: float,
        observe: Callable[[JobStatus | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.write = write  # stores one document, returns the job status (see job_state.write_progress)
        self.interval = interval
        self.observe = observe
        self.clock = clock
        self.on_error = on_error
        self.writes = 0
        self.failures = 0  # consecutive failed writes
        self._retry_at = -math.inf
        self._phase: str | None = None
        self._phase_started = ""
        self._last_write = -math.inf
        self._pending: dict[str, Any] | None = None

    def __call__(self, report: ProgressReport) -> None:
        new_phase = report.phase != self._phase
        if new_phase:
            if self._pending is not None:
                self.flush()  # the previous phase's last state
            self._phase = report.phase
            self._phase_started = utcnow().isoformat()
        self._pending = {
            "phase": report.phase,
            "step": int(report.step),
            "total": int(report.total),
            "metrics": json_safe(dict(report.metrics)),
            "started_at": self._phase_started,
        }
        now = self.clock()
        if now < self._retry_at:
            return  # backing off after a failed write; the latest report stays pending
        if new_phase or report.step >= report.total or now - self._last_write >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Write the latest report now, if it is not written yet."""
        if self._pending is None:
            return
        document, self._pending = self._pending, None
        self._last_write = self.clock()
        try:
            status = self.write(document)
        except Exception as error:  # progress is advisory: a failed write must not fail the job by itself
            self._pending = document  # tried again with the next report, unless a newer one replaces it
            self.failures += 1
            backoff = min(MAX_BACKOFF_SECONDS, self.interval * 2**self.failures)
            self._retry_at = self.clock() + backoff
            if self.failures == 1:
                log.warning("writing progress failed; retrying in %.1fs", backoff, exc_info=True)
            if self.on_error is not None:
                self.on_error(error)
            return
        self.failures, self._retry_at = 0, -math.inf
        self.writes += 1
        if self.observe is not None:
            self.observe(status)
