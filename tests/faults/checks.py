"""What every fault case asserts when the dust settles, and the small waits the cases share.

Nothing lost, nothing twice: every job final, exactly one result set per succeeded job (its artifact rows,
one model row for a training job) and none for the others, every stored object's sha256 equal to its row's,
and no object under the tenant's jobs without a row naming it.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import boto3
from botocore.config import Config as BotoConfig
from sqlalchemy import select

from shared.models import TERMINAL_STATUSES, Artifact, Dataset, Job, JobStatus, TrainedModel
from shared.settings import Settings
from shared.specs import JobKind
from tests.integration.conftest import JobClient, WorkerProcess

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f}s")
        time.sleep(interval)


def logged(workers: Iterable[WorkerProcess], text: str, timeout: float) -> WorkerProcess:
    """The first worker whose log shows `text` within `timeout`."""
    workers = list(workers)
    return eventually(
        lambda: next((w for w in workers if text in w.log_text()), None), timeout, f"log line {text!r}"
    )


def all_final(jobs: JobClient, job_ids: Iterable[uuid.UUID], timeout: float) -> dict[uuid.UUID, Job]:
    """Every job in a terminal state within `timeout` (one SQL query per poll)."""
    ids = list(job_ids)

    def probe() -> dict[uuid.UUID, Job] | None:
        with jobs.sessions() as session:
            rows = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
        return rows if all(rows[i].status in TERMINAL_STATUSES for i in ids) else None

    try:
        return eventually(probe, timeout, "every job final", interval=0.2)
    except TimeoutError:
        with jobs.sessions() as session:
            left = session.execute(
                select(Job.id, Job.status, Job.attempts, Job.lease_owner)
                .where(Job.id.in_(ids), Job.status.not_in(TERMINAL_STATUSES))
            ).all()  # fmt: skip
        message = f"{len(left)} of {len(ids)} jobs not final after {timeout:.0f}s: {left[:5]}"
        raise TimeoutError(message) from None


def s3_client(settings: Settings) -> Any:
    """A plain client on the real endpoint (not through any proxy), short timeouts."""
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
        config=BotoConfig(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}),
    )


def _objects(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
    return found


def _sha256(client: Any, bucket: str, key: str) -> str | None:
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return hashlib.sha256(body).hexdigest()


def orphans(jobs: JobClient, settings: Settings) -> set[str]:
    """Objects under the tenant's jobs that no row names (artifact, model, job checkpoint, dataset)."""
    client = s3_client(settings)
    stored = _objects(client, settings.s3_bucket, f"tenants/{jobs.tenant_id}/jobs/")
    tenant = jobs.tenant_id
    with jobs.sessions() as session:
        named = set(session.scalars(select(Artifact.key).where(Artifact.tenant_id == tenant)))
        for checkpoint, grid in session.execute(
            select(TrainedModel.checkpoint_key, TrainedModel.sample_grid_key).where(
                TrainedModel.tenant_id == tenant
            )
        ):
            named.update(k for k in (checkpoint, grid) if k)
        named.update(
            k for k in session.scalars(select(Job.checkpoint_key).where(Job.tenant_id == tenant)) if k
        )
        named.update(session.scalars(select(Dataset.object_key).where(Dataset.tenant_id == tenant)))
    return set(stored) - named


def collect_garbage(jobs: JobClient, settings: Settings, finished: Iterable[Job]) -> None:
    """What `genq admin gc` does, for these jobs only (the database is shared with other tests, whose
    objects live in other buckets): delete what no row references under each finished job's prefix."""
    from shared.storage import make_store
    from shared.storage_gc import _Finished, sweep_job

    store = make_store(settings)
    for job in finished:
        if job.status in TERMINAL_STATUSES and job.finished_at is not None:
            sweep_job(jobs.sessions, store, _Finished(job.id, job.tenant_id, job.finished_at))


def assert_consistent(
    jobs: JobClient,
    settings: Settings,
    job_ids: Iterable[uuid.UUID],
    expect: JobStatus | dict[uuid.UUID, JobStatus] | None = JobStatus.succeeded,
    orphan_timeout: float = 15.0,
) -> dict[uuid.UUID, Job]:
    """The suite's invariants over `job_ids` (already final), and `expect`ed statuses if given.

    The objects no row references are collected first, as an operator's `genq admin gc` would (after the
    stale attempts stopped); the no-orphan check then waits up to `orphan_timeout` for any stragglers."""
    ids = list(job_ids)
    client = s3_client(settings)
    bucket = settings.s3_bucket
    with jobs.sessions() as session:
        rows = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
        artifacts: dict[uuid.UUID, list[Artifact]] = {i: [] for i in ids}
        for artifact in session.scalars(select(Artifact).where(Artifact.job_id.in_(ids))):
            artifacts[artifact.job_id].append(artifact)
        models: dict[uuid.UUID, list[TrainedModel]] = {i: [] for i in ids}
        for model in session.scalars(select(TrainedModel).where(TrainedModel.training_job_id.in_(ids))):
            models[model.training_job_id].append(model)  # type: ignore[index]
    problems: list[str] = []
    for job_id in ids:
        job = rows[job_id]
        wanted = expect.get(job_id) if isinstance(expect, dict) else expect
        if job.status not in TERMINAL_STATUSES:
            problems.append(f"{job_id}: not final ({job.status})")
            continue
        if wanted is not None and job.status != wanted:
            why = f"{job.error_code}: {job.error_message}"
            problems.append(f"{job_id}: {job.status} ({why}), wanted {wanted}")
        succeeded = job.status == JobStatus.succeeded
        if succeeded and (job.result is None or not artifacts[job_id]):
            problems.append(f"{job_id}: succeeded without a result set")
        if not succeeded and (artifacts[job_id] or models[job_id]):
            problems.append(f"{job_id}: {job.status} but has {len(artifacts[job_id])} artifacts/models")
        want_models = 1 if succeeded and job.kind == JobKind.train else 0
        if len(models[job_id]) != want_models:
            problems.append(f"{job_id}: {len(models[job_id])} model rows, wanted {want_models}")
        for artifact in artifacts[job_id]:
            digest = _sha256(client, bucket, artifact.key)
            if digest != artifact.sha256:
                problems.append(f"{job_id}: {artifact.name} sha256 {digest} != row {artifact.sha256}")
        for model in models[job_id]:
            digest = _sha256(client, bucket, model.checkpoint_key)
            if digest != model.checkpoint_sha256:
                problems.append(f"{job_id}: model.pt sha256 {digest} != row {model.checkpoint_sha256}")
    assert not problems, "\n".join(problems)
    collect_garbage(jobs, settings, rows.values())
    try:
        eventually(lambda: not orphans(jobs, settings), orphan_timeout, "stale objects cleaned up", 0.5)
    except TimeoutError:
        left = sorted(orphans(jobs, settings))
        raise AssertionError(f"{len(left)} objects without a row: {left[:6]}") from None
    return rows


def cut_measure(start: float) -> float:
    """Seconds since `start` (time.monotonic()), for the printed recovery figures."""
    return round(time.monotonic() - start, 1)
