"""Jobs end to end on real workers: train (model row, artifacts downloadable by presigned URL), generate
(shards, manifest, grid; items independent of the job and the shard size)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid

import pytest
import requests
from sqlalchemy import select

from shared.models import JobStatus, TrainedModel
from shared.settings import Settings
from shared.specs import JobKind
from shared.storage import S3Store
from tests.integration.conftest import JobClient, Workers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TINY_CNN = {"family": "cnn", "dataset": "digits", "options": {"max_steps": 20, "width": 8, "batch_size": 32}}
TINY_GAN = {
    "family": "gan",
    "dataset": "digits",
    "options": {"max_steps": 10, "width": 8, "latent_dim": 16, "batch_size": 16},
}


def _download(settings: Settings, key: str) -> bytes:
    response = requests.get(S3Store(settings).download_url(key), timeout=30)
    assert response.status_code == 200, response.text[:200]
    return response.content


def _model(jobs: JobClient, model_id: str) -> TrainedModel:
    with jobs.sessions() as session:
        model = session.scalar(select(TrainedModel).where(TrainedModel.id == uuid.UUID(model_id)))
        assert model is not None
        return model


def test_train_cnn_registers_a_model_with_downloadable_artifacts(
    workers: Workers, jobs: JobClient, worker_settings: Settings
) -> None:
    workers.start()
    job_id = jobs.submit(JobKind.train, TINY_CNN)
    job = jobs.wait(job_id, timeout=90)
    assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    assert job.attempts == 1 and job.started_at and job.finished_at and job.lease_expires_at is None
    assert job.progress and job.progress["phase"] and job.progress["step"] >= 1

    model = _model(jobs, job.result["model_id"])  # type: ignore[index]
    assert (model.family, model.name, model.version, model.dataset) == ("cnn", "cnn-digits", 1, "digits")
    assert (model.image_size, model.channels, model.num_classes) == (28, 1, 10)
    assert model.training_job_id == job_id and model.class_names == [str(d) for d in range(10)]
    assert model.metrics == job.result["metrics"]  # type: ignore[index]

    artifacts = jobs.artifacts(job_id)
    assert set(artifacts) == {"model.pt", "grid.png", "loss_curve.png"}
    assert model.checkpoint_key == artifacts["model.pt"].key
    assert model.sample_grid_key == artifacts["grid.png"].key
    for artifact in artifacts.values():
        data = _download(worker_settings, artifact.key)
        assert len(data) == artifact.size and hashlib.sha256(data).hexdigest() == artifact.sha256
    assert _download(worker_settings, artifacts["grid.png"].key).startswith(b"\x89PNG")

    # A second model of the same name gets the next version.
    again = jobs.wait(jobs.submit(JobKind.train, TINY_CNN), timeout=90)
    assert _model(jobs, again.result["model_id"]).version == 2  # type: ignore[index]


def _members(settings: Settings, key: str) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(_download(settings, key))) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]


def _generated(jobs: JobClient, settings: Settings, job_id: uuid.UUID) -> tuple[dict, dict[str, bytes]]:  # type: ignore[type-arg]
    job = jobs.wait(job_id, timeout=60)
    assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    artifacts = jobs.artifacts(job_id)
    manifest = json.loads(_download(settings, artifacts["manifest.json"].key))
    images: dict[str, bytes] = {}
    for name in sorted(n for n in artifacts if n.startswith("shards/")):
        images.update(_members(settings, artifacts[name].key))
    assert _download(settings, artifacts["grid.png"].key).startswith(b"\x89PNG")
    return manifest, images


def test_generate_writes_shards_manifest_and_grid_reproducibly(
    workers: Workers, jobs: JobClient, worker_settings: Settings
) -> None:
    workers.start()
    trained = jobs.wait(jobs.submit(JobKind.train, TINY_GAN), timeout=90)
    assert trained.status == JobStatus.succeeded, (trained.error_code, trained.error_message)
    model_id = trained.result["model_id"]  # type: ignore[index]

    whole = jobs.submit(JobKind.generate, {"model_id": model_id, "count": 12, "seed": 7, "shard_size": 5})
    part = jobs.submit(
        JobKind.generate, {"model_id": model_id, "count": 4, "seed": 7, "first_index": 8, "shard_size": 3}
    )
    manifest, images = _generated(jobs, worker_settings, whole)
    part_manifest, part_images = _generated(jobs, worker_settings, part)

    assert manifest["model_id"] == model_id and manifest["seed"] == 7 and manifest["count"] == 12
    assert manifest["model_version_hash"] == _model(jobs, model_id).checkpoint_sha256
    items = manifest["items"]
    assert [item["index"] for item in items] == list(range(12))
    assert {item["shard"] for item in items} == {"shards/00000.tar", "shards/00001.tar", "shards/00002.tar"}
    assert items[11]["member"] == "000000011.png" and items[11]["shard"] == "shards/00002.tar"
    assert len(images) == 12 and all(png.startswith(b"\x89PNG") for png in images.values())
    assert len({item["seed"] for item in items}) == 12

    # Items 8..11 of the first job are items 0..3 of the second, byte for byte.
    assert [item["seed"] for item in part_manifest["items"]] == [item["seed"] for item in items[8:]]
    assert part_images == {name: images[name] for name in part_images}
    assert sorted(part_images) == [f"0000000{i:02d}.png" for i in range(8, 12)]
    assert jobs.get(whole).result["count"] == 12  # type: ignore[index]
