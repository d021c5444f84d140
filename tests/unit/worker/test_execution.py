"""One attempt without Celery: claim, a stand-in runner, the fenced finish; SQLite and a local store."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import job_state
from shared.datasets import DatasetError
from shared.db import engine_for, session_factory
from shared.models import Artifact, Base, Job, JobStatus, Tenant
from shared.settings import Settings
from shared.specs import JobKind, TrainParams
from worker import execution
from worker.engine.runtime import ConfigError
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
