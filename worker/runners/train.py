"""Training: data -> engine.train (resuming from the last checkpoint) -> model, grid, loss curve, registry."""

from __future__ import annotations

import hashlib
import logging
import re
import uuid

import torch
from sqlalchemy.orm import Session

from shared import job_state, registry
from shared.specs import TrainParams
from shared.storage import ObjectNotFound, StorageError
from worker.datasets import has_test_split, load_dataset
from worker.engine import api as engine
from worker.progress import json_safe
from worker.runners.base import JobRun, Outcome

log = logging.getLogger(__name__)

# Not artifacts: the resume points of a requeued job, `checkpoints/step-<step>-<sha256>.pt`.
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"/checkpoints/step-\d+-([0-9a-f]{64})\.pt$")


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
    ctx.on_checkpoint = CheckpointSaver(job)
    ctx.checkpoint_every_steps = params.checkpoint_every_steps
    ctx.checkpoint_every_seconds = params.checkpoint_every_seconds
    ctx.max_seconds = params.max_seconds
    output = engine.train(params.family.value, params.family_options(), data, ctx, holdout=holdout)

    final = job.outputs.put_bytes("model.pt", output.checkpoint)
    grid = job.outputs.put_bytes("grid.png", output.sample_grid_png)
    job.outputs.put_bytes("loss_curve.png", output.loss_curve_png)
    # The registry describes the model as its checkpoint does (resolved config, shape, classes).
    loaded = engine.load(output.checkpoint, torch.device("cpu"))
    metrics = json_safe(output.metrics)
    model_id = uuid.uuid4()
    name = params.name or f"{params.family.value}-{data.name or params.dataset}"

    def record(session: Session) -> None:
        registry.add_model(
            session,
            id=model_id,
            tenant_id=job.tenant_id,
            family=params.family,
            name=name,
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

    return Outcome({"model_id": str(model_id), "metrics": metrics}, record)


def checkpoint_name(step: int, sha256: str) -> str:
    """A resume point's name under the attempt's prefix: unique per step and content-addressed, so a
    recorded checkpoint is never overwritten and a damaged one is recognised on resume."""
    return f"{CHECKPOINT_DIR}/step-{step:09d}-{sha256}.pt"


def _expected_sha256(key: str) -> str | None:
    match = CHECKPOINT_PATTERN.search(key)
    return match.group(1) if match else None


def _resume_point(job: JobRun) -> bytes | None:
    if not job.checkpoint_key:
        return None
    try:
        checkpoint = job.store.get_bytes(job.checkpoint_key)
    except ObjectNotFound:
        log.warning("job %s: its checkpoint is missing; training from the start", job.job_id)
        return None
    expected = _expected_sha256(job.checkpoint_key)
    if expected is not None and hashlib.sha256(checkpoint).hexdigest() != expected:
        log.warning(
            "job %s: its checkpoint is damaged (sha256 mismatch); training from the start", job.job_id
        )
        return None
    log.info("job %s attempt %d resumes from %s", job.job_id, job.lease.attempt, job.checkpoint_key)
    return checkpoint


class CheckpointSaver:
    """`ctx.on_checkpoint`: upload under the attempt's prefix, record it fenced on the job row, then delete
    the checkpoint it supersedes (a requeued job's first save deletes the previous attempt's)."""

    def __init__(self, job: JobRun) -> None:
        self.job = job
        self.current = job.checkpoint_key

    def __call__(self, checkpoint: bytes, step: int) -> None:
        job = self.job
        key = job.outputs.key(checkpoint_name(step, hashlib.sha256(checkpoint).hexdigest()))
        job.store.put_bytes(key, checkpoint, "application/octet-stream")
        with job.sessions.begin() as session:
            held = job_state.record_checkpoint(session, job.lease, key)
        if not held:
            _delete_quietly(job, key)  # referenced by nothing: this attempt no longer holds the job
            raise engine.Canceled(f"attempt {job.lease.attempt} no longer holds job {job.job_id}")
        previous, self.current = self.current, key
        if previous and previous != key:
            _delete_quietly(job, previous)
        log.debug("job %s: checkpoint at step %d", job.job_id, step)


def _delete_quietly(job: JobRun, key: str) -> None:
    try:
        job.store.delete(key)
    except StorageError as exc:  # left for `genq admin gc`, which deletes what no row references
        log.warning("job %s: could not delete an old checkpoint now: %s", job.job_id, exc)
