"""Jobs end to end on real workers: train (model row, artifacts downloadable by presigned URL), generate
(shards, manifest, grid; items independent of the job and the shard size), evaluate and edit."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import select

from shared.job_events import channel
from shared.models import Job, JobStatus, TrainedModel
from shared.settings import Settings
from shared.specs import JobKind
from shared.storage import S3Store
from tests.integration.conftest import JobClient, shared_workers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TINY_CNN = {"family": "cnn", "dataset": "digits", "options": {"max_steps": 20, "width": 8, "batch_size": 32}}
TINY_GAN = {
    "family": "gan",
    "dataset": "digits",
    "options": {"max_steps": 10, "width": 8, "latent_dim": 16, "batch_size": 16},
}

worker = shared_workers(1)


@pytest.fixture(scope="module")
def client(module_settings: Settings, worker: Any) -> Iterator[JobClient]:
    jobs = JobClient(module_settings)
    yield jobs
    jobs.close()


@pytest.fixture(scope="module")
def trained(client: JobClient) -> dict[str, Job]:
    """A tiny CNN and a tiny GAN on digits, trained once for the module."""
    submitted = {"cnn": client.submit(JobKind.train, TINY_CNN), "gan": client.submit(JobKind.train, TINY_GAN)}
    done = {family: client.wait(job_id, timeout=120) for family, job_id in submitted.items()}
    for job in done.values():
        assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    return done


def _succeeded(client: JobClient, job_id: uuid.UUID, timeout: float = 60) -> Job:
    job = client.wait(job_id, timeout=timeout)
    assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    return job


def _download(settings: Settings, key: str) -> bytes:
    response = requests.get(S3Store(settings).download_url(key), timeout=30)
    assert response.status_code == 200, response.text[:200]
    return response.content


def _model(client: JobClient, model_id: str) -> TrainedModel:
    with client.sessions() as session:
        model = session.scalar(select(TrainedModel).where(TrainedModel.id == uuid.UUID(model_id)))
        assert model is not None
        return model


def _members(settings: Settings, key: str) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(_download(settings, key))) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]


def test_train_registers_a_model_with_downloadable_artifacts(
    client: JobClient, trained: dict[str, Job], module_settings: Settings
) -> None:
    job = trained["cnn"]
    assert job.attempts == 1 and job.started_at and job.finished_at and job.lease_expires_at is None
    assert job.progress and job.progress["step"] >= 1 and job.progress["started_at"]

    model = _model(client, job.result["model_id"])  # type: ignore[index]
    assert (model.family, model.name, model.version, model.dataset) == ("cnn", "cnn-digits", 1, "digits")
    assert (model.image_size, model.channels, model.num_classes) == (28, 1, 10)
    assert model.training_job_id == job.id and model.class_names == [str(d) for d in range(10)]
    assert model.metrics == job.result["metrics"]  # type: ignore[index]

    artifacts = client.artifacts(job.id)
    assert set(artifacts) == {"model.pt", "grid.png", "loss_curve.png"}
    assert (
        model.checkpoint_key == artifacts["model.pt"].key
        and model.sample_grid_key == artifacts["grid.png"].key
    )
    assert (
        hashlib.sha256(_download(module_settings, model.checkpoint_key)).hexdigest()
        == model.checkpoint_sha256
    )
    for artifact in artifacts.values():
        data = _download(module_settings, artifact.key)
        assert len(data) == artifact.size and hashlib.sha256(data).hexdigest() == artifact.sha256
    assert _download(module_settings, artifacts["grid.png"].key).startswith(b"\x89PNG")


def _generated(
    client: JobClient, settings: Settings, job_id: uuid.UUID
) -> tuple[dict[str, Any], dict[str, bytes]]:
    _succeeded(client, job_id)
    artifacts = client.artifacts(job_id)
    manifest = json.loads(_download(settings, artifacts["manifest.json"].key))
    images: dict[str, bytes] = {}
    for name in sorted(n for n in artifacts if n.startswith("shards/")):
        images.update(_members(settings, artifacts[name].key))
    assert _download(settings, artifacts["grid.png"].key).startswith(b"\x89PNG")
    return manifest, images


def test_generate_writes_shards_manifest_and_grid_reproducibly(
    client: JobClient, trained: dict[str, Job], module_settings: Settings
) -> None:
    model_id = trained["gan"].result["model_id"]  # type: ignore[index]
    whole = client.submit(JobKind.generate, {"model_id": model_id, "count": 12, "seed": 7, "shard_size": 5})
    part = client.submit(
        JobKind.generate, {"model_id": model_id, "count": 4, "seed": 7, "first_index": 8, "shard_size": 3}
    )
    manifest, images = _generated(client, module_settings, whole)
    part_manifest, part_images = _generated(client, module_settings, part)

    assert manifest["model_id"] == model_id and manifest["seed"] == 7 and manifest["count"] == 12
    assert manifest["model_version_hash"] == _model(client, model_id).checkpoint_sha256
    items = manifest["items"]
    assert [item["index"] for item in items] == list(range(12))
    assert {item["shard"] for item in items} == {"shards/00000.tar", "shards/00001.tar", "shards/00002.tar"}
    assert items[11]["member"] == "000000011.png" and items[11]["shard"] == "shards/00002.tar"
    assert len(images) == 12 and all(png.startswith(b"\x89PNG") for png in images.values())
    assert len({item["seed"] for item in items}) == 12

    # Items 8..11 of the first job are items 0..3 of the second, byte for byte.
    assert [item["seed"] for item in part_manifest["items"]] == [item["seed"] for item in items[8:]]
    assert sorted(part_images) == [f"0000000{i:02d}.png" for i in range(8, 12)]
    assert part_images == {name: images[name] for name in part_images}
    assert client.get(whole).result["count"] == 12  # type: ignore[index]


def test_a_job_announces_its_start_progress_and_end_on_the_change_channel(
    client: JobClient, trained: dict[str, Job], module_settings: Settings
) -> None:
    model_id = trained["gan"].result["model_id"]  # type: ignore[index]
    job_id = client.insert(JobKind.generate, {"model_id": model_id, "count": 3})
    broker = redis.Redis.from_url(module_settings.broker_url)
    listener = broker.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel(job_id))
    try:
        client.publish(job_id)
        _succeeded(client, job_id)
        heard = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and heard < 2:
            message = listener.get_message(timeout=0.5)  # None for the subscription's own confirmation too
            heard += message is not None and message["type"] == "message"
    finally:
        listener.close()
        broker.close()
    assert heard >= 2  # started, (progress,) finished: each one wakes the clients waiting with ?wait=


def test_evaluate_uses_the_newest_classifier_and_updates_the_registry(
    client: JobClient, trained: dict[str, Job]
) -> None:
    gan_id = trained["gan"].result["model_id"]  # type: ignore[index]
    cnn_id = trained["cnn"].result["model_id"]  # type: ignore[index]
    job = _succeeded(client, client.submit(JobKind.evaluate, {"model_id": gan_id, "num_samples": 100}))
    assert job.result["classifier_id"] == cnn_id and job.result["metrics"]  # type: ignore[index]
    evaluation = _model(client, gan_id).metrics["evaluation"]
    assert evaluation["classifier_id"] == cnn_id and evaluation["job_id"] == str(job.id)

    # Another tenant: the GAN is not theirs; a model of their own without a CNN has no classifier.
    stranger = JobClient(client.settings)
    try:
        foreign = stranger.wait(stranger.submit(JobKind.evaluate, {"model_id": gan_id, "num_samples": 100}))
        assert (foreign.status, foreign.error_code) == (JobStatus.failed, "model_not_found")
        gan = _model(client, gan_id)
        with stranger.sessions.begin() as session:
            own = TrainedModel(
                tenant_id=stranger.tenant_id, family=gan.family, name="copy", version=1, dataset="digits",
                image_size=28, channels=1, checkpoint_key=gan.checkpoint_key,
                checkpoint_sha256=gan.checkpoint_sha256,
            )  # fmt: skip
            session.add(own)
            session.flush()
            own_id = str(own.id)
        lonely = stranger.wait(stranger.submit(JobKind.evaluate, {"model_id": own_id, "num_samples": 100}))
        assert (lonely.status, lonely.error_code) == (JobStatus.failed, "no_classifier"), lonely.error_message
    finally:
        stranger.close()


def test_edit_writes_grid_images_and_captions(
    client: JobClient, trained: dict[str, Job], module_settings: Settings
) -> None:
    params = {
        "model_id": trained["gan"].result["model_id"],  # type: ignore[index]
        "operation": "class_swap",
        "source": {"dataset": "digits", "split": "test", "indices": [0, 1, 2]},
        "target_label": 3,
        "steps": 2,
    }
    job = _succeeded(client, client.submit(JobKind.edit, params), timeout=90)
    result = job.result or {}
    assert result["count"] >= 3 and len(result["captions"]) == result["count"]
    assert result["classifier_id"] == trained["cnn"].result["model_id"]  # type: ignore[index]
    artifacts = client.artifacts(job.id)
    assert set(artifacts) == {"grid.png", "shards/00000.tar"}
    members = _members(module_settings, artifacts["shards/00000.tar"].key)
    assert len(members) == result["count"] and all(png.startswith(b"\x89PNG") for png in members.values())
