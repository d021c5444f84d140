"""JSON views of rows. Download URLs are minted here, at read time, so they are always fresh.

The keys of each view match the response schemas in api/schemas.py (a test holds them together).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from shared.models import Artifact, Batch, Dataset, Job, JobStatus, TrainedModel, utcnow
from shared.scheduling import Standing
from shared.specs import JobKind
from shared.storage import ObjectStore
from shared.webhooks import batch_data


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def progress_view(job: Job, now: dt.datetime | None = None) -> dict[str, Any] | None:
    """{phase, step, total, percent, eta_seconds, metrics}: percent and ETA computed from step/total and
    the time since the phase (or the job) started, unless the worker wrote them itself."""
    progress = job.progress
    if not progress:
        return None
    step, total = _number(progress.get("step")), _number(progress.get("total"))
    percent = _number(progress.get("percent"))
    if percent is None and step is not None and total:
        percent = round(min(100.0, 100.0 * step / total), 2)
    eta = _number(progress.get("eta_seconds"))
    started = _parse_time(progress.get("started_at")) or job.started_at
    elapsed = max(0.0, ((now or utcnow()) - started).total_seconds()) if started is not None else None
    if eta is None and step and total and elapsed is not None and job.status == JobStatus.running:
        eta = round(elapsed / step * max(0.0, total - step), 1)
    budget = _number(job.params.get("max_seconds")) if job.kind == JobKind.train else None
    training = progress.get("phase") == "train" and job.status == JobStatus.running
    if budget and elapsed is not None and training:
        # A time budget that runs out before the step count does ends training first: the bar follows it.
        percent = round(max(percent or 0.0, min(100.0, 100.0 * elapsed / budget)), 2)
        left = max(0.0, budget - elapsed)
        eta = round(min(eta, left), 1) if eta is not None else round(left, 1)
    if job.status == JobStatus.succeeded:  # a time budget may have ended it far short of its step count
        percent, eta = 100.0, 0.0
    return {
        "phase": progress.get("phase"),
        "step": progress.get("step"),
        "total": progress.get("total"),
        "percent": percent,
        "eta_seconds": eta,
        "metrics": progress.get("metrics") or {},
    }


def _parse_time(value: Any) -> dt.datetime | None:
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return None


def artifact_view(artifact: Artifact, store: ObjectStore) -> dict[str, Any]:
    return {
        "name": artifact.name,
        "content_type": artifact.content_type,
        "size": artifact.size,
        "sha256": artifact.sha256,
        "url": store.download_url(artifact.key, PurePosixPath(artifact.name).name),
    }


def _error(job: Job) -> dict[str, str] | None:
    if job.error_code is None and job.error_message is None:
        return None
    return {"code": job.error_code or "error", "message": job.error_message or ""}


def job_model_id(job: Job) -> str | None:
    """The model a job made (train: from its result) or uses (generate/edit/evaluate)."""
    source = (job.result or {}) if job.kind == JobKind.train else job.params
    value = source.get("model_id")
    return str(value) if value is not None else None


def job_summary(job: Job) -> dict[str, Any]:
    """The view used in listings: no artifacts or queue position (those cost a query per job)."""
    return {
        "id": str(job.id),
        "kind": job.kind.value,
        "status": job.status.value,
        "priority": job.priority,
        "queue": job.queue,
        "progress": progress_view(job),
        "attempts": job.attempts,
        "error": _error(job),
        "batch_id": str(job.batch_id) if job.batch_id else None,
        "model_id": job_model_id(job),
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "published_at": iso(job.published_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


def job_view(job: Job, store: ObjectStore, standing: Standing | None) -> dict[str, Any]:
    """The full job; `standing` (queued jobs only) gives its queue position, the estimated seconds until
    it starts, and what it waits for."""
    result = job.result or {}
    return {
        **job_summary(job),
        "params": job.params,
        "queue_position": standing.position if standing else None,
        "queue_eta_seconds": standing.eta_seconds if standing else None,
        "waiting_for": standing.waiting_for if standing else None,
        "result": job.result,
        "metrics": result.get("metrics") or {},
        "artifacts": [artifact_view(a, store) for a in job.artifacts],
    }


def batch_view(batch: Batch, counts: Mapping[str, int]) -> dict[str, Any]:
    """The batch as its webhook events describe it (shared.webhooks.batch_data), and when it was canceled."""
    by_status = {status.value: int(counts.get(status.value, 0)) for status in JobStatus}
    return {**batch_data(batch, by_status), "canceled_at": iso(batch.canceled_at)}


def model_view(model: TrainedModel, store: ObjectStore) -> dict[str, Any]:
    stem = f"{model.name}-v{model.version}"
    grid = model.sample_grid_key
    return {
        "id": str(model.id),
        "family": model.family.value,
        "name": model.name,
        "version": model.version,
        "dataset": model.dataset,
        "image_size": model.image_size,
        "channels": model.channels,
        "num_classes": model.num_classes,
        "class_names": model.class_names,
        "metrics": model.metrics,
        "config": model.config,
        "training_job_id": str(model.training_job_id) if model.training_job_id else None,
        "checkpoint_sha256": model.checkpoint_sha256,
        # As last found by a job or `genq admin gc`; the single-model view also asks storage.
        "checkpoint": "missing" if model.checkpoint_missing_at is not None else "available",
        "checkpoint_url": store.download_url(model.checkpoint_key, f"{stem}.pt"),
        "sample_grid_url": store.download_url(grid, f"{stem}-samples.png") if grid else None,
        "created_at": iso(model.created_at),
    }


def dataset_view(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": str(dataset.id),
        "name": dataset.name,
        "format": dataset.format,
        "size_bytes": dataset.size_bytes,
        "sha256": dataset.sha256,
        "num_images": dataset.num_images,
        "image_size": dataset.image_size,
        "channels": dataset.channels,
        "class_names": dataset.class_names,
        "created_at": iso(dataset.created_at),
    }
