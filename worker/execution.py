"""One job attempt, start to finish: claim, heartbeat, run, store, finish fenced on the attempt.

Imported by the tasks inside the pool process only (it pulls in torch through the runners' engine).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared import job_state
from shared.datasets import DatasetError
from shared.db import session_factory
from shared.job_state import Lease
from shared.models import Job, JobStatus
from shared.settings import Settings, get_settings
from shared.storage import ObjectStore, make_store
from worker.engine.runtime import Canceled, ConfigError, RunContext, pick_device
from worker.lease import LeaseKeeper
from worker.outputs import JobOutputs
from worker.progress import ProgressWriter
from worker.runners.base import JobError, JobRun, Outcome

log = logging.getLogger(__name__)

Runner = Callable[[JobRun], Outcome]
RECORD_TRIES = 3  # registry versions are "next per name": a concurrent insert means try again


def execute(job_id: str, run: Runner, hostname: str | None = None) -> None:
    settings = get_settings()
    sessions = session_factory(settings.sql_url)
    owner = f"{hostname or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    try:
        job_uuid = uuid.UUID(job_id)
    except ValueError:
        log.error("message with a malformed job id %r dropped", job_id)
        return
    with sessions.begin() as session:
        job = job_state.claim_job(session, job_uuid, owner, settings.lease_seconds)
    if job is None:
        log.info("job %s is not queued (repeated delivery, canceled or finished): nothing to do", job_id)
        return
    lease = job_state.lease_of(job)
    log.info("job %s (%s) attempt %d started by %s", job.id, job.kind, lease.attempt, owner)
    keeper = LeaseKeeper(sessions, lease, settings.lease_seconds, settings.heartbeat_seconds).start()
    progress = ProgressWriter(
        _progress_sink(sessions, lease), settings.progress_interval_seconds, keeper.observe
    )
    outputs = JobOutputs(_store(settings), job.tenant_id, job.id, lease.attempt)
    try:
        with tempfile.TemporaryDirectory(prefix="genq-job-") as workdir:
            outcome = run(_job_run(job, lease, settings, sessions, outputs, progress, keeper, Path(workdir)))
        progress.flush()
        _finish(sessions, lease, lambda s: _record_success(s, lease, outcome, outputs), "succeeded")
    except Canceled:
        progress.flush()
        _finish(sessions, lease, lambda s: job_state.finish_canceled(s, lease), "canceled")
    except Exception as error:
        code, message = _failure(error)
        progress.flush()
        _finish(
            sessions, lease, lambda s: job_state.finish_failed(s, lease, code, message), f"failed ({code})"
        )
    finally:
        keeper.stop()


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
    sessions: sessionmaker[Session], lease: Lease
) -> Callable[[dict[str, Any]], JobStatus | None]:
    def write(document: dict[str, Any]) -> JobStatus | None:
        with sessions.begin() as session:
            return job_state.write_progress(session, lease, document)

    return write


def validation_message(error: ValidationError) -> str:
    """'field.path: what is wrong' per problem (a model-level check names its field in its message)."""
    problems = []
    for problem in error.errors():
        where = ".".join(map(str, problem["loc"]))
        what = problem["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {what}" if where else what)
    return "; ".join(problems)


def _failure(error: Exception) -> tuple[str, str]:
    """(error code, message for the user). Deterministic errors are not retried: they would fail again."""
    if isinstance(error, JobError):
        return error.code, error.message
    if isinstance(error, ValidationError):
        return "invalid_params", validation_message(error)
    if isinstance(error, ConfigError):
        return "invalid_params", str(error)
    if isinstance(error, DatasetError):
        return "invalid_dataset", str(error)
    log.exception("job failed with an unexpected error")
    return "internal_error", f"{type(error).__name__}: {error}"[:300]


def _record_success(session: Session, lease: Lease, outcome: Outcome, outputs: JobOutputs) -> bool:
    # The fenced finish first: when this attempt no longer holds the job nothing else is written.
    if not job_state.finish_succeeded(session, lease, outcome.result):
        return False
    session.add_all(outputs.artifact_rows())
    if outcome.record is not None:
        outcome.record(session)
    return True


def _finish(
    sessions: sessionmaker[Session], lease: Lease, write: Callable[[Session], bool], what: str
) -> None:
    for attempt in range(RECORD_TRIES):
        try:
            with sessions.begin() as session:
                done = write(session)
            break
        except IntegrityError:
            if attempt == RECORD_TRIES - 1:
                raise
    if done:
        log.info("job %s attempt %d %s", lease.job_id, lease.attempt, what)
    else:
        log.warning(
            "job %s attempt %d lost the job; its result (%s) is dropped", lease.job_id, lease.attempt, what
        )
