"""Storage hygiene against moto's S3 server and the local store, on Postgres: a finished job keeps exactly
the objects its rows reference; canceled and failed jobs' uploads, checkpoints and stale attempts' uploads
go; running and recently finished jobs are left alone; `genq admin gc` runs it. Also S3's own errors."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import storage
from shared.db import session_factory
from shared.models import Artifact, Job, JobStatus, Tenant, TrainedModel, utcnow
from shared.settings import Settings
from shared.specs import Family, JobKind
from shared.storage import (
    ObjectNotFound,
    S3Store,
    StorageError,
    StorageUnavailable,
    attempt_key,
    job_key,
    job_prefix,
    make_store,
)
from shared.storage_gc import collect_garbage
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

HOUR_AGO = dt.timedelta(hours=1)


@pytest.fixture(params=["s3", "local"])
def settings(request: pytest.FixtureRequest, service_settings: Settings, tmp_path: Path) -> Settings:
    if request.param == "s3":
        return service_settings
    return service_settings.model_copy(
        update={"storage_backend": "local", "local_storage_dir": tmp_path / "objects"}
    )


@dataclass
class Scenario:
    tenant_id: uuid.UUID
    jobs: dict[str, uuid.UUID]
    keep: set[str]  # what must survive, across all jobs
    untouched: set[str]  # objects of jobs gc must not sweep yet
    gone_model: uuid.UUID


def _put(store: storage.ObjectStore, *keys: str) -> None:
    for key in keys:
        store.put_bytes(key, f"bytes of {key}".encode(), "application/octet-stream")


def _job(session: Session, tenant_id: uuid.UUID, status: JobStatus, finished_ago: dt.timedelta | None) -> Job:
    now = utcnow()
    job = Job(
        tenant_id=tenant_id,
        kind=JobKind.train,
        params={},
        queue="q",
        status=status,
        attempts=2,
        finished_at=now - finished_ago if finished_ago is not None else None,
    )
    session.add(job)
    session.flush()
    return job


def _model(
    session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID, key: str, grid: str | None
) -> uuid.UUID:
    model = TrainedModel(
        tenant_id=tenant_id,
        family=Family.gan,
        name=f"m-{uuid.uuid4().hex[:6]}",
        version=1,
        training_job_id=job_id,
        dataset="fashion-mnist",
        image_size=28,
        channels=1,
        checkpoint_key=key,
        checkpoint_sha256="0" * 64,
        sample_grid_key=grid,
    )
    session.add(model)
    session.flush()
    return model.id


def build(sessions: sessionmaker[Session], store: storage.ObjectStore) -> Scenario:
    with sessions.begin() as session:
        tenant = Tenant(name=f"gc-{uuid.uuid4().hex[:8]}")
        session.add(tenant)
        session.flush()
        t = tenant.id
        ok = _job(session, t, JobStatus.succeeded, HOUR_AGO)
        canceled = _job(session, t, JobStatus.canceled, HOUR_AGO)
        failed = _job(session, t, JobStatus.failed, HOUR_AGO)
        running = _job(session, t, JobStatus.running, None)
        recent = _job(session, t, JobStatus.succeeded, dt.timedelta(seconds=5))
        lost = _job(session, t, JobStatus.succeeded, HOUR_AGO)

        model_pt, grid = attempt_key(t, ok.id, 2, "model.pt"), attempt_key(t, ok.id, 2, "grid.png")
        curve = attempt_key(t, ok.id, 2, "loss_curve.png")
        for name, key in (("model.pt", model_pt), ("grid.png", grid), ("loss_curve.png", curve)):
            session.add(
                Artifact(
                    job_id=ok.id, tenant_id=t, name=name, key=key, content_type="x", size=1, sha256="0" * 64
                )
            )
        _model(session, t, ok.id, model_pt, grid)
        gone_model = _model(session, t, lost.id, attempt_key(t, lost.id, 1, "model.pt"), None)
        recent_stale = attempt_key(t, recent.id, 1, "model.pt")
        running_keys = {
            attempt_key(t, running.id, 1, "checkpoints/step-000000005-" + "a" * 64 + ".pt"),
            attempt_key(t, running.id, 2, "shards/00000.tar"),
        }
        jobs = {
            "ok": ok.id,
            "canceled": canceled.id,
            "failed": failed.id,
            "running": running.id,
            "recent": recent.id,
            "lost": lost.id,
        }
    _put(store, model_pt, grid, curve)
    _put(
        store,
        attempt_key(t, ok.id, 1, "model.pt"),  # a stale attempt's upload
        attempt_key(t, ok.id, 1, "checkpoints/step-000000010-" + "b" * 64 + ".pt"),
        attempt_key(t, ok.id, 2, "checkpoints/step-000000020-" + "c" * 64 + ".pt"),
        job_key(t, ok.id, "checkpoints/latest.pt"),  # the layout before attempt prefixes
        attempt_key(t, canceled.id, 1, "shards/00000.tar"),
        attempt_key(t, canceled.id, 1, "shards/00001.tar"),
        attempt_key(t, failed.id, 3, "grid.png"),
        recent_stale,
        *running_keys,
    )
    return Scenario(t, jobs, {model_pt, grid, curve}, {recent_stale, *running_keys}, gone_model)


def _all_keys(store: storage.ObjectStore, scenario: Scenario) -> set[str]:
    return set(store.list_keys(f"tenants/{scenario.tenant_id}/"))


def test_gc_keeps_exactly_what_rows_reference(settings: Settings) -> None:
    store = make_store(settings)
    sessions = session_factory(settings.sql_url)
    scenario = build(sessions, store)

    report = collect_garbage(sessions, store, grace_seconds=600)
    assert _all_keys(store, scenario) == scenario.keep | scenario.untouched
    assert report.failed == 0 and report.deleted == 7 and report.missing_checkpoints == 1
    with sessions() as session:
        gone = session.get(TrainedModel, scenario.gone_model)
        assert gone is not None and gone.checkpoint_missing_at is not None
        swept = {
            row.id: row.outputs_swept_at
            for row in session.scalars(select(Job).where(Job.tenant_id == scenario.tenant_id))
        }
    unswept = {scenario.jobs["running"], scenario.jobs["recent"]}
    assert {job_id for job_id, at in swept.items() if at is None} == unswept

    # Swept jobs are not listed again; a rescan lists them and finds nothing more to delete.
    again = collect_garbage(sessions, store, grace_seconds=600)
    assert (again.deleted, again.missing_checkpoints) == (0, 0)
    assert scenario.jobs["ok"] not in _swept_again(sessions, scenario)
    rescan = collect_garbage(sessions, store, grace_seconds=600, rescan=True)
    assert rescan.jobs >= 4 and rescan.deleted == 0
    assert _all_keys(store, scenario) == scenario.keep | scenario.untouched


def _swept_again(sessions: sessionmaker[Session], scenario: Scenario) -> set[uuid.UUID]:
    with sessions() as session:
        return set(
            session.scalars(
                select(Job.id).where(Job.tenant_id == scenario.tenant_id, Job.outputs_swept_at.is_(None))
            )
        )


def test_dry_run_deletes_nothing(settings: Settings) -> None:
    store = make_store(settings)
    sessions = session_factory(settings.sql_url)
    scenario = build(sessions, store)
    before = _all_keys(store, scenario)
    report = collect_garbage(sessions, store, grace_seconds=600, dry_run=True)
    assert report.deleted >= 7 and _all_keys(store, scenario) == before


def test_genq_admin_gc(service_env: dict[str, str], service_settings: Settings) -> None:
    store = make_store(service_settings)
    sessions = session_factory(service_settings.sql_url)
    scenario = build(sessions, store)
    # One tenant's jobs: the session's database holds every other test's finished jobs too.
    tenant = str(scenario.tenant_id)
    command = [sys.executable, "-m", "genq.main", "admin", "gc", "--grace-seconds", "0", "--tenant", tenant]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, **service_env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "swept" in done.stdout and "deleted" in done.stdout
    # With no grace the recently finished job is swept too; the running one never is.
    recent = {k for k in scenario.untouched if str(scenario.jobs["recent"]) in k}
    assert _all_keys(store, scenario) == scenario.keep | (scenario.untouched - recent)


def test_gc_stops_when_storage_is_unavailable(service_settings: Settings) -> None:
    sessions = session_factory(service_settings.sql_url)
    scenario = build(sessions, make_store(service_settings))
    down = S3Store(
        service_settings.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:9", "s3_max_attempts": 1})
    )
    report = collect_garbage(sessions, down, grace_seconds=600)
    assert (report.jobs, report.failed) == (0, 1)
    assert _swept_again(sessions, scenario) == set(scenario.jobs.values())  # nothing marked swept


def test_s3_errors_are_classified(
    service_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = S3Store(service_settings)
    with pytest.raises(ObjectNotFound):
        store.get_bytes("tenants/t/jobs/j/none.pt")
    with pytest.raises(ObjectNotFound):
        store.download_file("tenants/t/jobs/j/none.pt", tmp_path / "none.pt")
    assert not store.exists("tenants/t/jobs/j/none.pt")
    no_bucket = S3Store(service_settings.model_copy(update={"s3_bucket": f"absent-{uuid.uuid4().hex[:8]}"}))
    with pytest.raises(StorageError) as raised:
        no_bucket.put_bytes("tenants/t/x", b"x", "a/b")
    assert not isinstance(raised.value, StorageUnavailable)  # a configuration error, not an outage

    # Listing pages and deleting in batches (batch size lowered to exercise it).
    monkeypatch.setattr(storage, "DELETE_BATCH", 3)
    prefix = job_prefix("t", uuid.uuid4())
    keys = [f"{prefix}attempts/1/shards/{i:05d}.tar" for i in range(7)]
    _put(store, *keys)
    assert sorted(store.list_keys(prefix)) == keys
    store.delete_many(keys)
    assert list(store.list_keys(prefix)) == []
