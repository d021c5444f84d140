"""Job transitions on SQLite: claims, fencing on the attempt, cancel, the sweeper's requeue rules."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from shared import job_state
from shared.job_state import Lease
from shared.models import Job, JobStatus, utcnow

Sessions = sessionmaker[Session]
MakeJob = Callable[..., uuid.UUID]


def _job(sessions: Sessions, job_id: uuid.UUID) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _claim(sessions: Sessions, job_id: uuid.UUID, owner: str = "w1", lease: float = 60) -> Job | None:
    with sessions.begin() as session:
        return job_state.claim_job(session, job_id, owner, lease)


def _lease(sessions: Sessions, job_id: uuid.UUID, owner: str = "w1") -> Lease:
    job = _claim(sessions, job_id, owner)
    assert job is not None
    return job_state.lease_of(job)


def _expire(sessions: Sessions, job_id: uuid.UUID) -> None:
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.lease_expires_at = utcnow() - dt.timedelta(seconds=1)


def test_claim_moves_queued_to_running_once(sessions: Sessions, make_job: MakeJob) -> None:
    job_id = make_job()
    claimed = _claim(sessions, job_id)
    assert claimed is not None
    assert (claimed.status, claimed.attempts, claimed.lease_owner) == (JobStatus.running, 1, "w1")
    assert claimed.started_at is not None and claimed.lease_expires_at > utcnow()
    # A second delivery, by any worker, finds it running and does nothing.
    assert _claim(sessions, job_id, owner="w2") is None
    assert _job(sessions, job_id).lease_owner == "w1"


def test_claim_refuses_canceled_finished_and_unknown_jobs(sessions: Sessions, make_job: MakeJob) -> None:
    canceled = make_job(status=JobStatus.canceled)
    succeeded = make_job(status=JobStatus.succeeded)
    assert _claim(sessions, canceled) is None
    assert _claim(sessions, succeeded) is None
    assert _claim(sessions, uuid.uuid4()) is None


def test_writes_are_fenced_on_the_attempt(sessions: Sessions, make_job: MakeJob) -> None:
    job_id = make_job()
    first = _lease(sessions, job_id)
    _expire(sessions, job_id)
    with sessions.begin() as session:
        report = job_state.requeue_expired(session, max_attempts=3)
    assert [t.job_id for t in report.requeued] == [job_id]
    second = _lease(sessions, job_id, owner="w2")
    assert second.attempt == 2

    with sessions.begin() as session:
        # The first attempt's late writes match nothing.
        assert job_state.renew_lease(session, first, 60) is None
        assert job_state.write_progress(session, first, {"step": 99}) is None
        assert not job_state.record_checkpoint(session, first, "stale.pt")
        assert not job_state.finish_succeeded(session, first, {"stale": True})
        assert not job_state.finish_failed(session, first, "internal_error", "stale")
        # The current attempt's writes land.
        assert job_state.write_progress(session, second, {"step": 1}) == JobStatus.running
        assert job_state.record_checkpoint(session, second, "latest.pt")
        assert job_state.finish_succeeded(session, second, {"ok": True})
    job = _job(sessions, job_id)
    assert (job.status, job.result, job.progress, job.checkpoint_key) == (
        JobStatus.succeeded,
        {"ok": True},
        {"step": 1},
        "latest.pt",
    )
    assert job.finished_at is not None and job.lease_expires_at is None
    with sessions.begin() as session:  # finishing twice changes nothing
        assert not job_state.finish_failed(session, second, "internal_error", "late")
    assert _job(sessions, job_id).status == JobStatus.succeeded


def test_cancel_reaches_the_worker_through_renew_and_progress(sessions: Sessions, make_job: MakeJob) -> None:
    job_id = make_job()
    lease = _lease(sessions, job_id)
    with sessions.begin() as session:
        assert job_state.request_cancel(session, job_id) == JobStatus.canceling
        assert job_state.renew_lease(session, lease, 60) == JobStatus.canceling
        assert job_state.write_progress(session, lease, {"step": 2}) == JobStatus.canceling
        assert job_state.finish_canceled(session, lease)
    assert _job(sessions, job_id).status == JobStatus.canceled


def test_failed_records_code_and_message(sessions: Sessions, make_job: MakeJob) -> None:
    job_id = make_job()
    lease = _lease(sessions, job_id)
    with sessions.begin() as session:
        assert job_state.finish_failed(session, lease, "invalid_params", "options.width: too small")
    job = _job(sessions, job_id)
    assert (job.status, job.error_code, job.error_message) == (
        JobStatus.failed,
        "invalid_params",
        "options.width: too small",
    )


def test_requeue_expired_rules(sessions: Sessions, make_job: MakeJob) -> None:
    live = make_job()
    retry = make_job()
    exhausted = make_job(attempts=2)
    canceling = make_job()
    for job_id in (live, retry, exhausted, canceling):
        _claim(sessions, job_id)
    with sessions.begin() as session:
        job_state.request_cancel(session, canceling)
    for job_id in (retry, exhausted, canceling):
        _expire(sessions, job_id)

    with sessions.begin() as session:
        report = job_state.requeue_expired(session, max_attempts=3)
    assert [t.job_id for t in report.requeued] == [retry]
    assert (report.exhausted, report.canceled) == (1, 1)

    assert _job(sessions, live).status == JobStatus.running
    requeued = _job(sessions, retry)
    assert (requeued.status, requeued.attempts, requeued.lease_owner, requeued.published_at) == (
        JobStatus.queued,
        1,
        None,
        None,
    )
    failed = _job(sessions, exhausted)
    assert (failed.status, failed.error_code, failed.attempts) == (JobStatus.failed, "attempts_exhausted", 3)
    assert "3 attempts" in (failed.error_message or "")
    assert _job(sessions, canceling).status == JobStatus.canceled

    with sessions.begin() as session:  # a second sweeper finds nothing left to do
        again = job_state.requeue_expired(session, max_attempts=3)
    assert (again.requeued, again.exhausted, again.canceled) == ([], 0, 0)


def test_find_lost_queued_mark_dispatched_and_hold_again(sessions: Sessions, make_job: MakeJob) -> None:
    now = utcnow()
    old = now - dt.timedelta(seconds=600)
    stale = make_job(published_at=old, created_at=old, updated_at=old)
    fresh = make_job(published_at=now)
    held = make_job(created_at=old, updated_at=old)  # never sent: the scheduler's, not lost
    running = make_job(published_at=old)
    _claim(sessions, running)

    with sessions() as session:
        lost = job_state.find_lost_queued(session, republish_after_seconds=300)
    assert {t.job_id for t in lost} == {stale}
    assert fresh not in {t.job_id for t in lost}

    with sessions.begin() as session:
        job_state.clear_published(session, [stale, running])  # held again; a running job is left alone
        assert set(job_state.mark_dispatched(session, [stale, held, running, fresh])) == {stale, held}
        assert job_state.find_lost_queued(session, 300) == []
    assert _job(sessions, running).published_at == old


def test_lease_dataclass_matches_claim(sessions: Sessions, make_job: MakeJob) -> None:
    job_id = make_job()
    assert _lease(sessions, job_id, owner="host:1") == Lease(job_id, 1, "host:1")


def test_release_for_retry_requeues_while_attempts_last(sessions: Sessions, make_job: MakeJob) -> None:
    job_id = make_job(published_at=utcnow())
    for attempt in (1, 2):
        lease = _lease(sessions, job_id)
        with sessions.begin() as session:
            assert job_state.release_for_retry(session, lease, max_attempts=3) == JobStatus.queued
        job = _job(sessions, job_id)
        assert (job.status, job.attempts, job.lease_owner, job.published_at) == (
            JobStatus.queued,
            attempt,
            None,
            None,
        )
        with sessions.begin() as session:  # a stale attempt's release changes nothing
            assert job_state.release_for_retry(session, lease, max_attempts=3) is None
    last = _lease(sessions, job_id)
    with sessions.begin() as session:  # the last attempt: the caller fails the job instead
        assert job_state.release_for_retry(session, last, max_attempts=3) is None
    assert _job(sessions, job_id).status == JobStatus.running

    canceling = make_job()
    lease = _lease(sessions, canceling)
    with sessions.begin() as session:
        job_state.request_cancel(session, canceling)
        assert job_state.release_for_retry(session, lease, max_attempts=3) == JobStatus.canceled
    assert _job(sessions, canceling).status == JobStatus.canceled
