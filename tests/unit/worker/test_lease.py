"""The lease keeper: renews from its thread, picks up cancel requests, notices a lost lease."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared import job_state
from shared.models import Job, JobStatus, utcnow
from worker.lease import LeaseKeeper


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def _keeper(sessions: sessionmaker[Session], job_id: uuid.UUID) -> LeaseKeeper:
    with sessions.begin() as session:
        job = job_state.claim_job(session, job_id, "w1", lease_seconds=2)
        assert job is not None
        lease = job_state.lease_of(job)
    return LeaseKeeper(sessions, lease, lease_seconds=2, heartbeat_seconds=0.05)


def _expires(sessions: sessionmaker[Session], job_id: uuid.UUID) -> dt.datetime:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.lease_expires_at is not None
        return job.lease_expires_at


def test_heartbeat_renews_and_sees_cancel(
    sessions: sessionmaker[Session], make_job: Callable[..., uuid.UUID]
) -> None:
    job_id = make_job()
    keeper = _keeper(sessions, job_id)
    first = _expires(sessions, job_id)
    keeper.start()
    try:
        assert _wait_for(lambda: _expires(sessions, job_id) > first)
        assert not keeper.should_stop()
        with sessions.begin() as session:
            job_state.request_cancel(session, job_id)
        assert _wait_for(lambda: keeper.cancel_requested)
        assert keeper.should_stop() and not keeper.lost
    finally:
        keeper.stop()


def test_lost_lease_stops_the_attempt(
    sessions: sessionmaker[Session], make_job: Callable[..., uuid.UUID]
) -> None:
    job_id = make_job()
    keeper = _keeper(sessions, job_id)
    with sessions.begin() as session:  # the sweeper requeues it and another worker claims it
        job = session.get(Job, job_id)
        assert job is not None
        job.lease_expires_at = utcnow() - dt.timedelta(seconds=1)
        job_state.requeue_expired(session, max_attempts=3)
        assert job_state.claim_job(session, job_id, "w2", 60) is not None
    keeper.renew()
    assert keeper.lost and keeper.should_stop()
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.status, job.lease_owner) == (JobStatus.running, "w2")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CutOff:
    """A sessionmaker whose database can be cut off: begin() raises as a refused connection does."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.down = False

    def begin(self):  # type: ignore[no-untyped-def]
        if self.down:
            raise OperationalError("UPDATE jobs", {}, Exception("connection refused"))
        return self.sessions.begin()


def test_renewal_failures_for_the_lease_length_lose_the_lease(
    sessions: sessionmaker[Session], make_job: Callable[..., uuid.UUID]
) -> None:
    job_id = make_job()
    with sessions.begin() as session:
        job = job_state.claim_job(session, job_id, "w1", lease_seconds=10)
        assert job is not None
        lease = job_state.lease_of(job)
    clock, database = FakeClock(), CutOff(sessions)
    keeper = LeaseKeeper(database, lease, 10, 2, granted_at=clock.now, clock=clock)  # type: ignore[arg-type]

    clock.now += 8
    keeper.renew()  # renewed at 108: good until 118
    assert not keeper.should_stop()
    database.down = True
    for _ in range(4):  # renewals fail; the lease still stands until 118
        clock.now += 2
        keeper.renew()
        assert not keeper.should_stop()
    assert keeper.failures == 4
    keeper.write_failed(OperationalError("UPDATE jobs", {}, Exception("progress write")))
    assert keeper.failures == 5
    clock.now = 118
    assert keeper.should_stop() and keeper.lost and not keeper.cancel_requested
    assert "not renewed for 10s" in keeper.lost_reason

    database.down = False  # the database is back, but the attempt stays lost: another may hold the job
    keeper.renew()
    assert keeper.lost and keeper.should_stop()
