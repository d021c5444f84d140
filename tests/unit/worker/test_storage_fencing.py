"""Storage writes fenced by the attempt: a stale attempt's uploads never replace the winner's, resume points
move from attempt to attempt (the superseded one deleted), and a model whose checkpoint is gone or damaged
fails with checkpoint_missing, recorded on the model. SQLite and a local store."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import job_state
from shared.db import engine_for, session_factory
from shared.models import Artifact, Base, Job, JobStatus, Tenant, TrainedModel, utcnow
from shared.settings import Settings
from shared.specs import Family, JobKind
from shared.storage import LocalStore, job_prefix
from shared.storage_gc import collect_garbage
from worker import execution
from worker.engine.runtime import Canceled
from worker.model_cache import clear_cache, load_model
from worker.outputs import JobOutputs
from worker.runners.base import JobError, JobRun, Outcome
from worker.runners.train import CheckpointSaver, _resume_point


@pytest.fixture()
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(Settings(local_storage_dir=tmp_path / "objects"))


def _claim(sessions: sessionmaker[Session], job_id: uuid.UUID, owner: str) -> job_state.Lease:
    with sessions.begin() as session:
        job = job_state.claim_job(session, job_id, owner, 60)
        assert job is not None
        return job_state.lease_of(job)


def _requeue(sessions: sessionmaker[Session]) -> None:
    """What the sweeper does once the running attempt's lease expired."""
    with sessions.begin() as session:
        job_state.requeue_expired(session, max_attempts=5, now=utcnow() + dt.timedelta(hours=1))


def _attempt(sessions, store, tenant_id, job_id, owner):  # type: ignore[no-untyped-def]
    lease = _claim(sessions, job_id, owner)
    with sessions() as session:
        row = session.get(Job, job_id)
        assert row is not None
        resume_key = row.checkpoint_key
    outputs = JobOutputs(store, tenant_id, job_id, lease.attempt)
    return SimpleNamespace(
        job_id=job_id,
        lease=lease,
        checkpoint_key=resume_key,
        outputs=outputs,
        store=store,
        sessions=sessions,
    )


def _recorded(sessions: sessionmaker[Session], job_id: uuid.UUID) -> str | None:
    with sessions() as session:
        row = session.get(Job, job_id)
        assert row is not None
        return row.checkpoint_key


def test_resume_points_are_fenced_per_attempt_and_superseded_ones_deleted(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, make_job, store: LocalStore
) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job()
    first = _attempt(sessions, store, tenant_id, job_id, "a")
    save_first = CheckpointSaver(first)  # type: ignore[arg-type]
    save_first(b"step 5", 5)
    step5 = _recorded(sessions, job_id)
    save_first(b"step 10", 10)
    step10 = _recorded(sessions, job_id)
    assert step5 and step10 and step5 != step10 and "/attempts/1/checkpoints/" in step10
    assert not store.exists(step5) and store.get_bytes(step10) == b"step 10"  # superseded: deleted

    _requeue(sessions)
    second = _attempt(sessions, store, tenant_id, job_id, "b")
    assert second.checkpoint_key == step10 and _resume_point(second) == b"step 10"  # type: ignore[arg-type]
    CheckpointSaver(second)(b"step 15", 15)  # type: ignore[arg-type]
    step15 = _recorded(sessions, job_id)
    assert step15 and "/attempts/2/checkpoints/" in step15 and not store.exists(step10)

    # The first attempt, cut off but still running, saves again: nothing it writes survives or counts.
    with pytest.raises(Canceled):
        save_first(b"stale step 20", 20)
    assert _recorded(sessions, job_id) == step15 and store.get_bytes(step15) == b"step 15"
    assert sorted(store.list_keys(job_prefix(tenant_id, job_id))) == [step15]


def test_a_damaged_or_missing_resume_point_trains_from_the_start(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, make_job, store: LocalStore
) -> None:  # type: ignore[no-untyped-def]
    job_id = make_job()
    first = _attempt(sessions, store, tenant_id, job_id, "a")
    CheckpointSaver(first)(b"good state", 5)  # type: ignore[arg-type]
    key = _recorded(sessions, job_id)
    assert key is not None
    store.put_bytes(key, b"bit rot", "application/octet-stream")
    _requeue(sessions)
    second = _attempt(sessions, store, tenant_id, job_id, "b")
    assert _resume_point(second) is None  # type: ignore[arg-type]
    store.delete(key)
    assert _resume_point(second) is None  # type: ignore[arg-type]


def _model(sessions: sessionmaker[Session], tenant_id: uuid.UUID, key: str, sha: str) -> TrainedModel:
    with sessions.begin() as session:
        model = TrainedModel(
            tenant_id=tenant_id,
            family=Family.gan,
            name="m",
            version=1,
            dataset="fashion-mnist",
            image_size=28,
            channels=1,
            checkpoint_key=key,
            checkpoint_sha256=sha,
        )
        session.add(model)
        session.flush()
        session.expunge(model)
        return model


def test_a_missing_or_damaged_model_checkpoint_is_checkpoint_missing(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, store: LocalStore
) -> None:
    clear_cache()
    key = f"tenants/{tenant_id}/jobs/{uuid.uuid4()}/attempts/1/model.pt"
    model = _model(sessions, tenant_id, key, hashlib.sha256(b"weights").hexdigest())
    for stored in (None, b"damaged weights"):
        if stored is not None:
            store.put_bytes(key, stored, "application/octet-stream")
        with pytest.raises(JobError) as raised:
            load_model(model, store, torch.device("cpu"), sessions)
        assert raised.value.code == "checkpoint_missing"
        assert "tenants/" not in raised.value.message and str(model.id) in raised.value.message
        with sessions() as session:
            assert session.get(TrainedModel, model.id).checkpoint_missing_at is not None  # type: ignore[union-attr]


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = Settings(data_dir=tmp_path, storage_backend="local", heartbeat_seconds=1, lease_seconds=30)
    Base.metadata.create_all(engine_for(settings.sql_url))
    monkeypatch.setattr(execution, "get_settings", lambda: settings)
    return settings


def test_a_stale_attempt_cannot_replace_the_winners_model(settings: Settings) -> None:
    """Issue 8's first case, without processes: attempt 1 is cut off mid-run, attempt 2 takes the job over
    and succeeds, then attempt 1 uploads its model.pt and returns. The winner's object is untouched."""
    db = session_factory(settings.sql_url)
    store = LocalStore(settings)
    with db.begin() as session:
        tenant = Tenant(name=uuid.uuid4().hex)
        session.add(tenant)
        session.flush()
        job = Job(tenant_id=tenant.id, kind=JobKind.train, params={}, queue="q")
        session.add(job)
        session.flush()
        job_id, tenant_id = job.id, tenant.id

    def winner(run: JobRun) -> Outcome:
        run.outputs.put_bytes("model.pt", b"the winner's weights")
        return Outcome({"winner": run.lease.attempt})

    def cut_off(run: JobRun) -> Outcome:
        run.outputs.put_bytes("grid.png", b"stale grid")
        _requeue(db)  # its lease expired: the sweeper requeues the job ...
        execution.execute(str(job_id), winner, "host-b")  # ... and another worker runs it to the end
        run.outputs.put_bytes("model.pt", b"the stale attempt's weights")
        return Outcome({"winner": run.lease.attempt})

    execution.execute(str(job_id), cut_off, "host-a")
    with db() as session:
        row = session.get(Job, job_id)
        assert row is not None and (row.status, row.result, row.attempts) == (
            JobStatus.succeeded,
            {"winner": 2},
            2,
        )
        artifacts = session.scalars(select(Artifact).where(Artifact.job_id == job_id)).all()
    [artifact] = artifacts
    assert "/attempts/2/" in artifact.key
    winner_bytes = store.get_bytes(artifact.key)
    assert winner_bytes == b"the winner's weights"
    assert hashlib.sha256(winner_bytes).hexdigest() == artifact.sha256

    # The stale attempt's uploads are garbage: gc deletes them and keeps exactly the recorded artifact.
    report = collect_garbage(db, store, grace_seconds=0)
    assert report.jobs == 1
    assert list(store.list_keys(job_prefix(tenant_id, job_id))) == [artifact.key]
