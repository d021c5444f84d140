"""Training: data -> engine.train (resuming from the last checkpoint) -> model, grid, loss curve, registry."""

from __future__ import annotations

import logging
import uuid
from functools import partial

import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import job_state
from shared.models import TrainedModel
from shared.specs import TrainParams
from shared.storage import ObjectNotFound
from worker.datasets import has_test_split, load_dataset
from worker.engine import api as engine
from worker.engine.runtime import Canceled
from worker.progress import json_safe
from worker.runners.base import JobRun, Outcome

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoints/latest.pt"  # not an artifact: the resume point of a requeued job


def run(job: JobRun) -> Outcome:
    params = TrainParams.model_validate(job.params)
    data = load_dataset(job, params.dataset, "train", params.image_size)
    # Metrics on the data set's own held-out split when it has one (not on data the model saw).
    holdout = (
        load_dataset(job, params.dataset, "test", params.image_size)
        if has_test_split(params.dataset)
        else None
    )

    ctx = job.ctx
    ctx.resume_from = _resume_point(job)
    ctx.on_checkpoint = partial(_save_checkpoint, job)
    ctx.checkpoint_every_steps = params.checkpoint_every_steps
    ctx.checkpoint_every_seconds = params.checkpoint_every_seconds
    ctx.max_seconds = params.max_seconds
    output = engine.train(params.family.value, params.options, data, ctx, holdout=holdout)

    final = job.outputs.put_bytes("model.pt", output.checkpoint)
    grid = job.outputs.put_bytes("grid.png", output.sample_grid_png)
    job.outputs.put_bytes("loss_curve.png", output.loss_curve_png)
    # The registry describes the model as its checkpoint does (resolved config, shape, classes).
    loaded = engine.load(output.checkpoint, torch.device("cpu"))
    metrics = json_safe(output.metrics)
    model_id = uuid.uuid4()
    name = params.name or f"{params.family.value}-{data.name or params.dataset}"

    def record(session: Session) -> None:
        latest = session.scalar(
            select(func.max(TrainedModel.version)).where(
                TrainedModel.tenant_id == job.tenant_id, TrainedModel.name == name
            )
        )
        session.add(
            TrainedModel(
                id=model_id,
                tenant_id=job.tenant_id,
                family=params.family,
                name=name,
                version=(latest or 0) + 1,
                training_job_id=job.job_id,
                dataset=params.dataset,
                image_size=loaded.image_size,
                channels=loaded.channels,
                num_classes=loaded.num_classes,
                class_names=list(loaded.class_names),
                checkpoint_key=final.key,
                checkpoint_sha256=final.sha256,
                sample_grid_key=grid.key,
                metrics=metrics,
                config=json_safe(dict(loaded.config)),
            )
        )

    return Outcome({"model_id": str(model_id), "metrics": metrics}, record)


def _resume_point(job: JobRun) -> bytes | None:
    if not job.checkpoint_key:
        return None
    try:
        checkpoint = job.store.get_bytes(job.checkpoint_key)
    except ObjectNotFound:
        log.warning(
            "job %s: checkpoint %s is missing; training from the start", job.job_id, job.checkpoint_key
        )
        return None
    log.info("job %s attempt %d resumes from %s", job.job_id, job.lease.attempt, job.checkpoint_key)
    return checkpoint


def _save_checkpoint(job: JobRun, checkpoint: bytes, step: int) -> None:
    key = job.outputs.key(CHECKPOINT_NAME)
    job.store.put_bytes(key, checkpoint, "application/octet-stream")
    with job.sessions.begin() as session:
        held = job_state.record_checkpoint(session, job.lease, key)
    if not held:
        raise Canceled(f"attempt {job.lease.attempt} no longer holds job {job.job_id}")
    log.debug("job %s: checkpoint at step %d", job.job_id, step)
