"""One attempt without Celery: claim, a stand-in runner, the fenced finish; SQLite and a local store."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from celery.exceptions import Reject
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared import job_state
from shared.datasets import DatasetError
from shared.db import engine_for, session_factory
from shared.models import Artifact, Base, Job, JobStatus, Tenant
from shared.settings import Settings
from shared.specs import JobKind, TrainParams
from shared.storage import ObjectNotFound, StorageError, StorageUnavailable
from tests.conftest import free_port
from worker import execution
from worker.engine.runtime import Canceled, ConfigError
from worker.runners.base import JobError, JobRun, Outcome


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = Settings(data_dir=tmp_path, storage_backend="local", heartbeat_seconds=1, lease_seconds=30)
    Base.metadata.create_all(engine_for(settings.sql_url))
    monkeypatch.setattr(execution, "get_settings", lambda: settings)
    return settings


@pytest.fixture()
def db(settings: Settings) -> sessionmaker[Session]:
    return session_factory(settings.sql_url)


def _job(db: sessionmaker[Session]) -> str:
    with db.begin() as session:
        tenant = Tenant(name=uuid.uuid4().hex)
        session.add(tenant)
        session.flush()
        job = Job(tenant_id=tenant.id, kind=JobKind.train, params={"x": 1}, queue="q")
        session.add(job)
        session.flush()
        return str(job.id)


def _row(db: sessionmaker[Session], job_id: str) -> Job:
    with db() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


def test_success_stores_result_artifacts_and_extra_rows_together(db: sessionmaker[Session]) -> None:
    job_id = _job(db)
    seen: list[JobRun] = []

    def runner(job: JobRun) -> Outcome:
        seen.append(job)
        job.ctx.report("train", 1, 2, loss=0.5)
        job.ctx.report("train", 2, 2, loss=0.25)
        job.outputs.put_bytes("grid.png", b"\x89PNG...")
        return Outcome({"ok": True}, record=lambda session: session.add(Tenant(name=f"made-by-{job.job_id}")))

    execution.execute(job_id, runner, "host")
    job = _row(db, job_id)
    assert (job.status, job.result, job.attempts) == (JobStatus.succeeded, {"ok": True}, 1)
    assert (
        job.progress is not None and job.progress["step"] == 2 and job.progress["metrics"] == {"loss": 0.25}
    )
    assert seen[0].params == {"x": 1} and seen[0].lease.owner.startswith("host:")
    with db() as session:
        [artifact] = session.scalars(select(Artifact).where(Artifact.job_id == job.id)).all()
        assert (artifact.name, artifact.content_type, artifact.size) == ("grid.png", "image/png", 7)
        assert session.scalar(select(Tenant).where(Tenant.name == f"made-by-{job_id}")) is not None

    # A second delivery of the finished job does nothing.
    execution.execute(job_id, lambda job: pytest.fail("ran twice"), "host")  # type: ignore[arg-type,return-value]
    assert _row(db, job_id).attempts == 1


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (JobError("no_classifier", "train a CNN first"), "no_classifier", "train a CNN first"),
        (ConfigError("options.width: too small"), "invalid_params", "options.width: too small"),
        (DatasetError("dataset x: not found"), "invalid_dataset", "dataset x: not found"),
        (RuntimeError("boom"), "internal_error", "RuntimeError: boom"),
        # Internal object keys never reach the user's message.
        (
            ObjectNotFound("tenants/t/jobs/j/model.pt: no such object"),
            "checkpoint_missing",
            "a model checkpoint this job needs is missing from storage",
        ),
        (
            StorageError("get genq/tenants/t/jobs/j/model.pt failed: AccessDenied"),
            "storage_error",
            "object storage refused an operation this job needs",
        ),
        (
            RuntimeError("checkpoint tenants/t/jobs/j/model.pt does not match"),
            "internal_error",
            "RuntimeError: checkpoint <object> does not match",
        ),
    ],
)
def test_errors_fail_the_job_with_a_code(
    db: sessionmaker[Session], error: Exception, code: str, message: str
) -> None:
    job_id = _job(db)

    def runner(job: JobRun) -> Outcome:
        raise error

    execution.execute(job_id, runner)
    job = _row(db, job_id)
    assert (job.status, job.error_code, job.error_message) == (JobStatus.failed, code, message)


def test_validation_errors_name_the_field(db: sessionmaker[Session]) -> None:
    job_id = _job(db)

    def runner(job: JobRun) -> Outcome:
        TrainParams.model_validate({"family": "cnn", "dataset": "nope"})
        raise AssertionError("unreachable")

    execution.execute(job_id, runner)
    job = _row(db, job_id)
    assert job.error_code == "invalid_params" and (job.error_message or "").startswith("dataset: ")


def test_cancel_requested_mid_run_ends_canceled(db: sessionmaker[Session]) -> None:
    job_id = _job(db)

    def runner(job: JobRun) -> Outcome:
        with db.begin() as session:
            job_state.request_cancel(session, job.job_id)
        for step in range(1, 1000):
            job.ctx.report("train", step, 1000)  # the progress write brings the cancel flag back
            job.ctx.check()
        raise AssertionError("not canceled")

    execution.execute(job_id, runner)
    assert _row(db, job_id).status == JobStatus.canceled


def test_an_attempt_that_lost_its_lease_writes_nothing(db: sessionmaker[Session]) -> None:
    job_id = _job(db)

    def runner(job: JobRun) -> Outcome:
        with db.begin() as session:  # the sweeper gave the job to another worker meanwhile
            row = session.get(Job, job.job_id)
            assert row is not None
            row.attempts, row.lease_owner = 2, "other"
        job.outputs.put_bytes("grid.png", b"x")
        return Outcome({"stale": True}, record=lambda session: pytest.fail("recorded a stale result"))

    execution.execute(job_id, runner)
    job = _row(db, job_id)
    assert (job.status, job.result, job.lease_owner) == (JobStatus.running, None, "other")
    with db() as session:
        assert session.scalars(select(Artifact).where(Artifact.job_id == job.id)).all() == []


def _fault(error: Exception):  # type: ignore[no-untyped-def]
    def runner(job: JobRun) -> Outcome:
        job.outputs.put_bytes("grid.png", b"half-done")
        raise error

    return runner


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (StorageUnavailable("object storage did not answer after 5 tries"), "storage_unavailable"),
        (OperationalError("UPDATE jobs", {}, Exception("connection lost")), "database_unavailable"),
    ],
)
def test_an_infrastructure_fault_requeues_the_job_until_its_attempts_run_out(
    db: sessionmaker[Session], settings: Settings, error: Exception, code: str
) -> None:
    job_id = _job(db)
    for attempt in range(1, settings.max_attempts):
        execution.execute(job_id, _fault(error))
        job = _row(db, job_id)
        assert (job.status, job.attempts, job.error_code) == (JobStatus.queued, attempt, None)
        assert job.lease_owner is None and job.published_at is None  # the sweeper publishes it again
    execution.execute(job_id, _fault(error))
    job = _row(db, job_id)
    assert (job.status, job.attempts, job.error_code) == (JobStatus.failed, settings.max_attempts, code)
    with db() as session:
        assert session.scalars(select(Artifact).where(Artifact.job_id == job.id)).all() == []


class FlakyStore:
    """A probe store whose check fails `down` times, then answers."""

    def __init__(self, down: int) -> None:
        self.down, self.checks = down, 0

    def check(self) -> None:
        self.checks += 1
        if self.checks <= self.down:
            raise StorageUnavailable("still down")


def test_an_interrupted_attempt_is_held_until_storage_answers_then_requeued(
    db: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FlakyStore(down=3)
    monkeypatch.setattr(execution, "probe_store", lambda _settings: store)
    monkeypatch.setattr(execution, "RECOVERY_PROBE_SECONDS", 0.01)
    job_id = _job(db)
    execution.execute(job_id, _fault(StorageUnavailable("down")))
    assert store.checks == 4  # three failed probes, then the one that answered
    job = _row(db, job_id)
    assert (job.status, job.attempts) == (JobStatus.queued, 1)


def test_the_hold_is_bounded_and_ends_at_a_cancel(
    db: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FlakyStore(down=10**6)
    monkeypatch.setattr(execution, "probe_store", lambda _settings: store)
    monkeypatch.setattr(execution, "RECOVERY_PROBE_SECONDS", 0.01)
    settings.recovery_wait_seconds = 0.3
    job_id = _job(db)
    execution.execute(job_id, _fault(StorageUnavailable("down")))
    assert _row(db, job_id).status == JobStatus.queued and 5 < store.checks < 10**6  # gave up at the bound

    settings.recovery_wait_seconds = 600
    canceled = _job(db)

    def cancel_soon() -> None:
        time.sleep(0.3)
        with db.begin() as session:
            job_state.request_cancel(session, uuid.UUID(canceled))

    threading.Thread(target=cancel_soon).start()
    started = time.monotonic()
    execution.execute(canceled, _fault(StorageUnavailable("down")))
    assert _row(db, canceled).status == JobStatus.canceled and time.monotonic() - started < 60


def test_an_infrastructure_fault_on_a_canceling_job_cancels_it(db: sessionmaker[Session]) -> None:
    job_id = _job(db)

    def runner(job: JobRun) -> Outcome:
        with db.begin() as session:
            job_state.request_cancel(session, job.job_id)
        raise StorageUnavailable("down")

    execution.execute(job_id, runner)
    assert _row(db, job_id).status == JobStatus.canceled


def test_an_attempt_whose_lease_runs_out_stops_and_records_nothing(
    db: sessionmaker[Session], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database stops answering this worker's renewals and progress writes (the sweeper, elsewhere,
    can still reach it): once the lease could not be renewed for its length the run stops at the next
    step check, and neither its result nor its artifacts are recorded."""
    settings = settings.model_copy(update={"lease_seconds": 2, "heartbeat_seconds": 1})
    monkeypatch.setattr(execution, "get_settings", lambda: settings)
    job_id = _job(db)

    def cut_off(*args: object, **kwargs: object) -> None:
        raise OperationalError("UPDATE jobs ...", {}, Exception("connection timed out"))

    monkeypatch.setattr(job_state, "renew_lease", cut_off)
    monkeypatch.setattr(job_state, "write_progress", cut_off)
    stopped: list[float] = []

    def runner(job: JobRun) -> Outcome:
        started = time.monotonic()
        for step in range(1, 1_000_000):
            job.ctx.report("train", step, 1_000_000)
            try:
                job.ctx.check()
            except Canceled:
                stopped.append(time.monotonic() - started)
                raise
            if time.monotonic() - started > 30:
                break
            time.sleep(0.01)
        job.outputs.put_bytes("model.pt", b"stale weights")
        return Outcome({"stale": True}, record=lambda session: pytest.fail("recorded a stale result"))

    execution.execute(job_id, runner)
    assert stopped, "the run never stopped"
    job = _row(db, job_id)
    # Left for the sweeper: it requeues the job once the lease expires in the row.
    assert (job.status, job.result, job.progress, job.attempts) == (JobStatus.running, None, None, 1)
    with db() as session:
        assert session.scalars(select(Artifact).where(Artifact.job_id == job.id)).all() == []


def test_a_claim_that_cannot_reach_the_database_is_handed_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreachable = settings.model_copy(
        update={"database_url": f"postgresql+psycopg://genq@127.0.0.1:{free_port()}/genq"}
    )
    monkeypatch.setattr(execution, "get_settings", lambda: unreachable)
    job_id = str(uuid.uuid4())
    with pytest.raises(execution.ClaimUnavailable):
        execution.execute(job_id, lambda job: pytest.fail("ran without a claim"))  # type: ignore[arg-type,return-value]

    # The task turns it into a requeueing reject, so the broker keeps the message for another worker.
    from worker import tasks

    monkeypatch.setattr(tasks, "CLAIM_RETRY_PAUSE_SECONDS", 0)

    class Request:
        hostname = "w1@host"

    class FakeTask:
        request = Request()

    runner = type("Runner", (), {"run": staticmethod(lambda job: pytest.fail("ran"))})
    with pytest.raises(Reject) as rejected:
        tasks._execute(FakeTask(), job_id, runner)  # type: ignore[arg-type]
    assert rejected.value.requeue is True
