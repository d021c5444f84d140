"""One job attempt, start to finish: claim, heartbeat, run, store, finish fenced on the attempt.

Imported by the tasks inside the pool process only (it pulls in torch through the runners' engine).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared import job_state
from shared.db import ping_database, session_factory
from shared.job_events import ChangeNotifier
from shared.job_state import Lease
from shared.logging import bind_log_context
from shared.models import Job, JobStatus
from shared.scheduling import wake
from shared.settings import Settings, get_settings
from shared.storage import ObjectStore, make_store, probe_store
from worker.engine.runtime import Canceled, RunContext, pick_device
from worker.failures import Failure, classify, is_database_fault
from worker.lease import LeaseKeeper
from worker.outputs import JobOutputs
from worker.progress import ProgressWriter
from worker.runners.base import JobRun, Outcome

log = logging.getLogger(__name__)

Runner = Callable[[JobRun], Outcome]
RECORD_TRIES = 3  # registry versions are "next per name": a concurrent insert means try again
RECOVERY_PROBE_SECONDS = 1.0


class ClaimUnavailable(Exception):
    """The claim could not reach the database. The task hands its message back to the broker (another
    worker, or this one once its database answers, takes it): a claim that never ran must not consume it."""


def execute(job_id: str, run: Runner, hostname: str | None = None) -> None:
    settings = get_settings()
    sessions = session_factory(settings.sql_url)
    owner = f"{hostname or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    try:
        job_uuid = uuid.UUID(job_id)
    except ValueError:
        log.error("message with a malformed job id %r dropped", job_id)
        return
    granted_at = time.monotonic()  # the lease runs from before the claim is sent: a safe lower bound
    try:
        with sessions.begin() as session:
            job = job_state.claim_job(session, job_uuid, owner, settings.lease_seconds)
    except Exception as error:
        if is_database_fault(error):
            raise ClaimUnavailable(f"job {job_id}: the claim could not reach the database") from error
        raise
    if job is None:
        log.info("job %s is not queued (repeated delivery, canceled or finished): nothing to do", job_id)
        return
    lease = job_state.lease_of(job)
    changed = _change_notice(settings, job)
    changed()  # started: waiting clients (?wait=) answer now
    bind_log_context(tenant_id=job.tenant_id, attempt=lease.attempt)  # on every log line of this attempt
    log.info("job %s (%s) attempt %d started by %s", job.id, job.kind, lease.attempt, owner)
    keeper = LeaseKeeper(
        sessions, lease, settings.lease_seconds, settings.heartbeat_seconds, granted_at=granted_at
    ).start()
    progress = ProgressWriter(
        _progress_sink(sessions, lease, changed),
        settings.progress_interval_seconds,
        keeper.observe,
        on_error=keeper.write_failed,
    )
    outputs = JobOutputs(_store(settings), job.tenant_id, job.id, lease.attempt)
    try:
        ending = _run(job, lease, settings, sessions, outputs, progress, keeper, run)
    finally:
        keeper.stop()  # the finish settles the lease; a heartbeat after it would find the job gone
    keeper.should_stop()  # brings the lease deadline up to date
    if keeper.lost:
        # Another attempt may hold the job (or will, once the sweeper sees the lease expired): this
        # attempt's outputs are left unrecorded, under its own keys, for storage cleanup.
        log.warning(
            "job %s attempt %d lost its lease (%s); its outcome (%s) and outputs are discarded",
            lease.job_id,
            lease.attempt,
            keeper.lost_reason,
            ending.what,
        )
        outputs.discard()  # now rather than at the next storage gc: nothing will ever reference them
        return
    progress.flush()
    _finish(sessions, lease, ending)
    changed()
    wake(_notifier_for(settings).client, [job.queue])  # a slot is free: the scheduler fills it now


class _Ending:
    """How the attempt ended, and the fenced write that records it (returns what happened, or None when
    the attempt no longer holds the job)."""

    def __init__(self, what: str, write: Callable[[Session], str | None]) -> None:
        self.what = what
        self.write = write


def _run(
    job: Job,
    lease: Lease,
    settings: Settings,
    sessions: sessionmaker[Session],
    outputs: JobOutputs,
    progress: ProgressWriter,
    keeper: LeaseKeeper,
    run: Runner,
) -> _Ending:
    try:
        with tempfile.TemporaryDirectory(prefix="genq-job-") as workdir:
            outcome = run(_job_run(job, lease, settings, sessions, outputs, progress, keeper, Path(workdir)))
    except Canceled:
        return _Ending("canceled", lambda s: "canceled" if job_state.finish_canceled(s, lease) else None)
    except Exception as error:
        failure = classify(error)
        if failure.transient:
            log.warning(
                "job %s attempt %d interrupted by an infrastructure fault (%s: %s)",
                lease.job_id,
                lease.attempt,
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
            )
            _wait_for_recovery(failure, settings, keeper)
            return _Ending(
                f"interrupted ({failure.code})",
                lambda s: _release_or_fail(s, lease, failure, settings.max_attempts),
            )
        return _Ending(
            f"failed ({failure.code})",
            lambda s: (
                f"failed ({failure.code})"
                if job_state.finish_failed(s, lease, failure.code, failure.message)
                else None
            ),
        )
    return _Ending(
        "succeeded",
        lambda s: "succeeded" if _record_success(s, lease, outcome, outputs) else None,
    )


def _wait_for_recovery(failure: Failure, settings: Settings, keeper: LeaseKeeper) -> None:
    """Hold the attempt (its lease still renewed) until the dependency that failed answers again, for at
    most `recovery_wait_seconds`, before giving the job back. Requeued at once, a job would spend its
    attempts within one outage, on this worker or the next; and a worker waiting here takes no other job
    that would fail the same way."""
    probe = {
        "storage_unavailable": lambda: probe_store(settings).check(),
        "database_unavailable": lambda: ping_database(settings.sql_url),
    }.get(failure.code)
    if probe is None:
        return
    deadline = time.monotonic() + settings.recovery_wait_seconds
    while time.monotonic() < deadline and not keeper.should_stop():
        try:
            probe()
        except Exception:
            time.sleep(RECOVERY_PROBE_SECONDS)
            continue
        log.info("%s: answering again; the job goes back to the queue", failure.code)
        return
    log.warning(
        "%s: still failing after %.0f s; the job goes back to the queue",
        failure.code,
        settings.recovery_wait_seconds,
    )


def _release_or_fail(session: Session, lease: Lease, failure: Failure, max_attempts: int) -> str | None:
    """Back to the queue while attempts are left (the sweeper publishes it again), else failed."""
    status = job_state.release_for_retry(session, lease, max_attempts)
    if status == JobStatus.queued:
        return f"requeued after {failure.code} (attempt {lease.attempt} of {max_attempts})"
    if status == JobStatus.canceled:
        return "canceled"
    if job_state.finish_failed(session, lease, failure.code, failure.message):
        return f"failed ({failure.code}, attempts exhausted)"
    return None


_cached_store: tuple[Settings, ObjectStore] | None = None


def _store(settings: Settings) -> ObjectStore:
    """One store (one set of S3 clients) per process: the jobs of a batch start without building one."""
    global _cached_store
    if _cached_store is None or _cached_store[0] is not settings:
        _cached_store = (settings, make_store(settings))
    return _cached_store[1]


def _job_run(
    job: Job,
    lease: Lease,
    settings: Settings,
    sessions: sessionmaker[Session],
    outputs: JobOutputs,
    progress: ProgressWriter,
    keeper: LeaseKeeper,
    workdir: Path,
) -> JobRun:
    ctx = RunContext(
        on_progress=progress,
        should_stop=keeper.should_stop,
        device=pick_device(settings.device),
        mixed_precision=settings.mixed_precision,
    )
    return JobRun(
        job_id=job.id,
        tenant_id=job.tenant_id,
        params=dict(job.params),
        checkpoint_key=job.checkpoint_key,
        lease=lease,
        ctx=ctx,
        settings=settings,
        sessions=sessions,
        store=outputs.store,
        outputs=outputs,
        workdir=workdir,
    )


def _progress_sink(
    sessions: sessionmaker[Session], lease: Lease, changed: Callable[[], None]
) -> Callable[[dict[str, Any]], JobStatus | None]:
    def write(document: dict[str, Any]) -> JobStatus | None:
        with sessions.begin() as session:
            status = job_state.write_progress(session, lease, document)
        changed()
        return status

    return write


_notifier: tuple[str, ChangeNotifier] | None = None


def _notifier_for(settings: Settings) -> ChangeNotifier:
    """One Redis client per process for change notices and scheduler wakes."""
    global _notifier
    if _notifier is None or _notifier[0] != settings.broker_url:
        _notifier = (settings.broker_url, ChangeNotifier(settings.broker_url))
    return _notifier[1]


def _change_notice(settings: Settings, job: Job) -> Callable[[], None]:
    """Tells waiting clients that the job (and its batch) changed."""
    notifier, ids = _notifier_for(settings), (job.id, job.batch_id)
    return lambda: notifier.changed(ids)


def _record_success(session: Session, lease: Lease, outcome: Outcome, outputs: JobOutputs) -> bool:
    # The fenced finish first: when this attempt no longer holds the job nothing else is written.
    if not job_state.finish_succeeded(session, lease, outcome.result):
        return False
    session.add_all(outputs.artifact_rows())
    if outcome.record is not None:
        outcome.record(session)
    return True


def _finish(sessions: sessionmaker[Session], lease: Lease, ending: _Ending) -> None:
    for attempt in range(RECORD_TRIES):
        try:
            with sessions.begin() as session:
                done = ending.write(session)
            break
        except IntegrityError:
            if attempt == RECORD_TRIES - 1:
                raise
        except Exception as error:
            if not is_database_fault(error):
                raise
            # Nothing is recorded: the lease runs out and the sweeper requeues the job (one more attempt).
            log.warning(
                "job %s attempt %d: recording its outcome (%s) failed, the database did not answer; "
                "the sweeper requeues the job when its lease expires",
                lease.job_id,
                lease.attempt,
                ending.what,
            )
            return
    if done is not None:
        log.info("job %s attempt %d %s", lease.job_id, lease.attempt, done)
    else:
        log.warning(
            "job %s attempt %d lost the job; its result (%s) is dropped",
            lease.job_id,
            lease.attempt,
            ending.what,
        )
