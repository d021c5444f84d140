"""Editing: source images (a data set's items, at the model's size and channels) or seeds -> engine.edit ->
a grid PNG, every output image as a PNG in one tar shard, captions and metrics in the result."""

from __future__ import annotations

import numpy as np
import torch

from shared.specs import EditParams, MaskBox
from worker.datasets import load_dataset
from worker.engine import api as engine
from worker.engine.api import EditRequest, LoadedModel
from worker.model_cache import load_model, model_row, newest_classifier
from worker.runners.base import JobError, JobRun, Outcome
from worker.runners.generate import check_labels
from worker.shards import ShardWriter

CLASS_EDITS = ("class_swap", "attribute")


def mask_array(box: MaskBox, size: int) -> np.ndarray:
    """(size, size) bool, True inside the box: the pixels inpainting fills."""
    if box.bottom > size or box.right > size:
        raise JobError("invalid_params", f"mask: must lie within the model's {size}x{size} pixels")
    mask = np.zeros((size, size), dtype=bool)
    mask[box.top : box.bottom, box.left : box.right] = True
    return mask


def source_images(job: JobRun, params: EditParams, model: LoadedModel) -> tuple[np.ndarray, list[int] | None]:
    """(N, H, W, C) uint8 items of the source data set, and their labels when the model is conditional."""
    assert params.source is not None
    source = params.source
    data = load_dataset(job, source.dataset, source.split, model.image_size, model.channels)
    outside = [i for i in source.indices if i >= len(data)]
    if outside:
        raise JobError(
            "invalid_params",
            f"source.indices: {outside[:5]} out of range; "
            f"{source.dataset} {source.split} has {len(data)} images",
        )
    index = torch.tensor(source.indices, dtype=torch.long)
    images = data.images[index].permute(0, 2, 3, 1).contiguous().numpy()
    labels = None
    if data.labels is not None and model.num_classes:
        labels = data.labels[index].tolist()
        check_labels(labels, model.num_classes, "source")
    return images, labels


def _classifier(job: JobRun, params: EditParams, dataset: str) -> tuple[LoadedModel | None, str | None]:
    """The CNN that scores class edits: the one asked for, else the newest on the model's data (optional)."""
    if params.operation not in CLASS_EDITS and params.classifier_id is None:
        return None, None
    if params.classifier_id is not None:  # a CNN: checked when the job was submitted
        row = model_row(job.sessions, job.tenant_id, params.classifier_id, "classifier_id")
    else:
        row = newest_classifier(job.sessions, job.tenant_id, dataset)
        if row is None:
            return None, None
    return load_model(row, job.store, job.ctx.device, job.sessions), str(row.id)


def run(job: JobRun) -> Outcome:
    params = EditParams.model_validate(job.params)
    row = model_row(job.sessions, job.tenant_id, params.model_id)  # a GAN or VAE: checked on submission
    model = load_model(row, job.store, job.ctx.device, job.sessions)
    images, labels = source_images(job, params, model) if params.source is not None else (None, None)
    count = len(images) if images is not None else 1
    if params.target_label is not None:
        check_labels([params.target_label], model.num_classes, "target_label")
    classifier, classifier_id = _classifier(job, params, row.dataset)
    request = EditRequest(
        operation=params.operation,
        images=images,
        labels=labels,
        seeds=params.seeds,
        target_labels=[params.target_label] * count if params.target_label is not None else None,
        mask=mask_array(params.mask, model.image_size) if params.mask is not None else None,
        steps=params.steps,
        strength=params.strength,
        seed=params.seed,
    )
    job.ctx.report("edit", 0, 1)
    output = engine.edit(model, request, classifier, job.ctx)
    job.ctx.report("edit", 1, 1)

    shard = ShardWriter(job.outputs, shard_size=max(1, len(output.images)), workdir=job.workdir)
    for i, image in enumerate(output.images):
        shard.add(i, engine.encode_png(image))
    shard.close()
    job.outputs.put_bytes("grid.png", engine.grid_png(output.images))
    return Outcome(
        {
            "count": len(output.images),
            "captions": list(output.captions),
            "metrics": {k: float(v) for k, v in output.metrics.items()},
            "model_id": str(row.id),
            "classifier_id": classifier_id,
            "images": "shards/00000.tar",
            "grid": "grid.png",
        }
    )
