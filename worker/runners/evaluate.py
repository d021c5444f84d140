"""Evaluation: a generative model's samples against the real test images, in a CNN classifier's feature
space; the metrics go into the result and into the model's registry entry under "evaluation"."""

from __future__ import annotations

from sqlalchemy.orm import Session

from shared import registry
from shared.specs import EvaluateParams
from worker.datasets import load_dataset
from worker.engine import api as engine
from worker.model_cache import load_model, model_row, newest_classifier
from worker.progress import json_safe
from worker.runners.base import JobError, JobRun, Outcome


def run(job: JobRun) -> Outcome:
    params = EvaluateParams.model_validate(job.params)
    row = model_row(job.sessions, job.tenant_id, params.model_id)
    if params.classifier_id is not None:  # a CNN: checked when the job was submitted
        classifier_row = model_row(job.sessions, job.tenant_id, params.classifier_id, "classifier_id")
    else:
        found = newest_classifier(job.sessions, job.tenant_id, row.dataset)
        if found is None:
            raise JobError(
                "no_classifier",
                f"no CNN classifier trained on {row.dataset}: train one (family cnn) or give classifier_id",
            )
        classifier_row = found
    model = load_model(row, job.store, job.ctx.device, job.sessions)
    classifier = load_model(classifier_row, job.store, job.ctx.device, job.sessions)
    # The real images: the data set's test split (all of an upload), as the model sees them.
    real = load_dataset(job, row.dataset, "test", model.image_size, model.channels)
    metrics = json_safe(
        engine.evaluate(
            model, classifier, real, num_samples=params.num_samples, seed=params.seed, ctx=job.ctx
        )
    )
    evaluation = {
        **metrics,
        "classifier_id": str(classifier_row.id),
        "job_id": str(job.job_id),
        "num_samples": params.num_samples,
    }

    def record(session: Session) -> None:
        registry.record_evaluation(session, row.id, evaluation)

    return Outcome(
        {"model_id": str(row.id), "classifier_id": str(classifier_row.id), "metrics": metrics}, record
    )
