"""Storage on a real worker, moto's S3 server and Postgres: a training job's outputs sit under its
attempt's prefix, each matching its row's sha256; after gc nothing is left without a row; a model whose
checkpoint is gone or damaged fails its sampling jobs with checkpoint_missing and says so."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from sqlalchemy import select

from shared.models import JobStatus, TrainedModel
from shared.settings import Settings
from shared.specs import Family, JobKind
from shared.storage import S3Store, attempt_key, job_prefix
from shared.storage_gc import collect_garbage
from tests.integration.conftest import JobClient, WorkerProcess, shared_workers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

worker = shared_workers(1)


def test_training_outputs_are_fenced_and_gc_leaves_exactly_the_artifacts(
    worker: list[WorkerProcess], module_jobs: JobClient, module_settings: Settings
) -> None:
    jobs, store = module_jobs, S3Store(module_settings)
    options = {"max_steps": 10, "width": 8, "batch_size": 16, "augment": False}
    job_id = jobs.submit(
        JobKind.train, {"family": "cnn", "dataset": "digits", "options": options, "checkpoint_every_steps": 5}
    )
    job = jobs.wait(job_id, timeout=120)
    assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    artifacts = jobs.artifacts(job_id)
    assert set(artifacts) == {"model.pt", "grid.png", "loss_curve.png"}
    for name, row in artifacts.items():
        assert row.key == attempt_key(jobs.tenant_id, job_id, 1, name)
        assert hashlib.sha256(store.get_bytes(row.key)).hexdigest() == row.sha256
    with jobs.sessions() as session:
        model = session.scalar(select(TrainedModel).where(TrainedModel.training_job_id == job_id))
    assert model is not None and model.checkpoint_key == artifacts["model.pt"].key

    # The resume point is the only extra object (its predecessor was deleted when it was recorded).
    prefix = job_prefix(jobs.tenant_id, job_id)
    extra = set(store.list_keys(prefix)) - {row.key for row in artifacts.values()}
    assert extra == {job.checkpoint_key} and "/attempts/1/checkpoints/step-000000010-" in job.checkpoint_key

    collect_garbage(jobs.sessions, store, grace_seconds=0, tenant_id=jobs.tenant_id)  # this test's jobs only
    assert set(store.list_keys(prefix)) == {row.key for row in artifacts.values()}


def _fake_model(jobs: JobClient, key: str, sha256: str) -> uuid.UUID:
    with jobs.sessions.begin() as session:
        model = TrainedModel(
            tenant_id=jobs.tenant_id,
            family=Family.gan,
            name=f"gan-{uuid.uuid4().hex[:6]}",
            version=1,
            dataset="fashion-mnist",
            image_size=28,
            channels=1,
            checkpoint_key=key,
            checkpoint_sha256=sha256,
        )
        session.add(model)
        session.flush()
        return model.id


def test_a_missing_or_damaged_checkpoint_fails_with_checkpoint_missing(
    worker: list[WorkerProcess], module_jobs: JobClient, module_settings: Settings
) -> None:
    jobs, store = module_jobs, S3Store(module_settings)
    key = attempt_key(jobs.tenant_id, uuid.uuid4(), 1, "model.pt")
    missing = _fake_model(jobs, key, "0" * 64)  # never stored (as if deleted)
    store.put_bytes(key + ".damaged", b"not the weights", "application/octet-stream")
    damaged = _fake_model(jobs, key + ".damaged", "1" * 64)
    for model_id in (missing, damaged):
        job_id = jobs.submit(JobKind.generate, {"model_id": str(model_id), "count": 2})
        job = jobs.wait(job_id, timeout=60)
        assert (job.status, job.error_code, job.attempts) == (JobStatus.failed, "checkpoint_missing", 1)
        assert "tenants/" not in (job.error_message or "") and str(model_id) in (job.error_message or "")
        with jobs.sessions() as session:
            row = session.get(TrainedModel, model_id)
            assert row is not None and row.checkpoint_missing_at is not None
