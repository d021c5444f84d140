"""A running job's lease, renewed from a heartbeat thread, and the flags the step loop reads.

The engine checks `should_stop()` at every optimisation step, so it must never touch SQL: the heartbeat
(every `heartbeat_seconds`) and every progress write (a few times a second) refresh the cached flags from
the job row's status instead.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from shared import job_state
from shared.job_state import Lease
from shared.models import JobStatus

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        lease: Lease,
        lease_seconds: float,
        heartbeat_seconds: float,
    ) -> None:
        self.sessions = sessions
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.cancel_requested = False  # the job went `canceling`
        self.lost = False  # another attempt holds the job now (or it was settled by the sweeper)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{lease.job_id}", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.heartbeat_seconds + 5)

    def should_stop(self) -> bool:
        """The per-step cancel check: a cached read, no I/O."""
        return self.cancel_requested or self.lost

    def observe(self, status: JobStatus | None) -> None:
        """Take in the status a fenced write returned (None: the write matched no row)."""
        if status is None:
            if not self.lost:
                log.warning("job %s attempt %d lost its lease", self.lease.job_id, self.lease.attempt)
            self.lost = True
        elif status == JobStatus.canceling:
            self.cancel_requested = True

    def renew(self) -> None:
        with self.sessions.begin() as session:
            status = job_state.renew_lease(session, self.lease, self.lease_seconds)
        self.observe(status)

    def _beat(self) -> None:
        while not self._stopped.wait(self.heartbeat_seconds):
            try:
                self.renew()
            except Exception:  # the database may be back at the next beat; the lease outlives a few misses
                log.warning("renewing the lease of job %s failed", self.lease.job_id, exc_info=True)
