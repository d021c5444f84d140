"""A running job's lease, renewed from a heartbeat thread, and the flags the step loop reads.

The engine checks `should_stop()` at every optimisation step, so it must never touch SQL: the heartbeat
(every `heartbeat_seconds`) and every progress write (a few times a second) refresh the cached flags from
the job row's status instead.

A lease is only as good as its last renewal. The keeper remembers when the last successful renewal was
*sent* (a lower bound of what the row says), and once `lease_seconds` have passed since then the attempt
counts as lost even if no statement ever said so: the database may be unreachable, or a renewal may hang,
while the sweeper (which can reach it) requeues the job and another worker takes it over. A lost attempt
stops at its next step check and its outputs are discarded (see `worker.execution`).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from shared import job_state
from shared.job_state import Lease
from shared.models import JobStatus
from worker.metrics import lease_renewed

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        lease: Lease,
        lease_seconds: float,
        heartbeat_seconds: float,
        granted_at: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`granted_at`: the clock reading taken before the claim was sent (the lease runs from then)."""
        self.sessions = sessions
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.clock = clock
        self.cancel_requested = False  # the job went `canceling`
        self.lost = False  # another attempt holds the job now, it was settled, or the lease ran out
        self.lost_reason = ""
        self.failures = 0  # renewals and progress writes that failed since the last good renewal
        self._expires = (clock() if granted_at is None else granted_at) + lease_seconds
        self._stopped = threading.Event()
        # In a copy of the caller's context: the heartbeat's log lines carry the job's ids too.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._beat,),
            name=f"lease-{lease.job_id}",
            daemon=True,
        )

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.heartbeat_seconds + 5)

    def should_stop(self) -> bool:
        """The per-step cancel check: cached flags and a clock read, no I/O."""
        if self.cancel_requested or self.lost:
            return True
        if self.clock() >= self._expires:
            self._lose(f"not renewed for {self.lease_seconds:g}s ({self.failures} failed writes)")
            return True
        return False

    def observe(self, status: JobStatus | None) -> None:
        """Take in the status a fenced write returned (None: the write matched no row)."""
        if status is None:
            self._lose("the job row names another attempt or is settled")
        elif status == JobStatus.canceling:
            self.cancel_requested = True

    def write_failed(self, error: BaseException) -> None:
        """A renewal or a progress write raised: counted, and logged at the first of a run of failures.
        It does not extend the lease, so a run of them ends in `should_stop()` once the lease is out."""
        self.failures += 1
        if self.failures == 1:
            log.warning(
                "job %s attempt %d: a lease renewal or progress write failed (%s: %s); the attempt stops "
                "unless the lease is renewed within %.0fs",
                self.lease.job_id,
                self.lease.attempt,
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
                max(0.0, self._expires - self.clock()),
            )

    def renew(self) -> None:
        sent = self.clock()
        try:
            with self.sessions.begin() as session:
                status = job_state.renew_lease(session, self.lease, self.lease_seconds)
        except Exception as error:
            lease_renewed("error")
            self.write_failed(error)
            return
        lease_renewed("renewed" if status is not None else "lost")
        if status is not None and not self.lost:
            self._expires = sent + self.lease_seconds
            if self.failures:
                log.info(
                    "job %s attempt %d: lease renewed again after %d failed writes",
                    self.lease.job_id,
                    self.lease.attempt,
                    self.failures,
                )
            self.failures = 0
        self.observe(status)

    def _lose(self, reason: str) -> None:
        if not self.lost:
            self.lost_reason = reason
            self.lost = True
            log.warning(
                "job %s attempt %d lost its lease: %s; stopping at the next step check",
                self.lease.job_id,
                self.lease.attempt,
                reason,
            )

    def _beat(self) -> None:
        while not self._stopped.wait(self.heartbeat_seconds):
            if self.lost:
                return  # nothing left to renew: the job is someone else's
            self.renew()
