"""Bulk generation: per-item seeds -> engine.generate in chunks -> PNGs in tar shards, manifest, preview grid.

Item i is seeded `item_seed(seed, first_index + i)` (or `seeds[i]`), so it is the same image whichever job,
chunking, shard size or worker produces it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from shared.specs import GenerateParams
from worker.engine import api as engine
from worker.model_cache import load_model, model_row
from worker.runners.base import JobError, JobRun, Outcome
from worker.shards import ManifestWriter, ShardWriter

CHUNK_SIZE = 256  # images per engine call: one progress report and cancel check each
PREVIEW_COUNT = 64


def broadcast_labels(labels: list[int] | int | None, count: int) -> list[int] | None:
    if labels is None:
        return None
    return [labels] * count if isinstance(labels, int) else list(labels)


def check_labels(labels: Sequence[int] | None, num_classes: int, field: str = "labels") -> None:
    if labels is None:
        return
    if num_classes == 0:
        raise JobError("invalid_params", f"{field}: the model is unconditional; leave labels out")
    bad = sorted({label for label in labels if label >= num_classes})
    if bad:
        raise JobError(
            "invalid_params", f"{field}: {bad[:5]} out of range; the model has {num_classes} classes"
        )


def resize_nhwc(chunk: np.ndarray, size: int) -> np.ndarray:
    """uint8 (B, H, W, C) -> (B, size, size, C), antialiased."""
    if chunk.shape[1] == size:
        return chunk
    nchw = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2)
    return engine.resize_images(nchw, size).permute(0, 2, 3, 1).contiguous().numpy()


def run(job: JobRun) -> Outcome:
    params = GenerateParams.model_validate(job.params)
    row = model_row(job.sessions, job.tenant_id, params.model_id)  # a GAN or VAE: checked on submission
    model = load_model(row, job.store, job.ctx.device, job.sessions)
    first = params.first_index
    seeds = params.seeds or [engine.item_seed(params.seed, first + i) for i in range(params.count)]
    labels = broadcast_labels(params.labels, params.count)
    check_labels(labels, model.num_classes)
    size = params.output_size or model.image_size
    item_params = {"truncation": params.truncation, "temperature": params.temperature, "output_size": size}

    manifest = ManifestWriter(
        job.workdir / "manifest.json",
        {
            "job_id": str(job.job_id),
            "model_id": str(row.id),
            "model_name": row.name,
            "model_version": row.version,
            "model_version_hash": model.version_hash,
            "seed": params.seed,
            "first_index": first,
            "count": params.count,
            "shard_size": params.shard_size,
            "params": item_params,
        },
    )
    shards = ShardWriter(job.outputs, params.shard_size, job.workdir)
    preview: list[np.ndarray] = []
    done = 0
    try:
        # Progress and the cancel check come from this loop, once per chunk written (not from the engine,
        # which would report each chunk before it is encoded).
        chunks = engine.generate(
            model,
            seeds,
            labels,
            truncation=params.truncation,
            temperature=params.temperature,
            chunk_size=CHUNK_SIZE,
        )
        for chunk in chunks:
            chunk = resize_nhwc(chunk, size)
            for image, png in zip(chunk, engine.encode_pngs(chunk), strict=True):
                shard, member = shards.add(first + done, png)
                label = labels[done] if labels else None
                manifest.add(
                    {
                        "index": first + done,
                        "seed": seeds[done],
                        "label": label,
                        "params": item_params,
                        "shard": shard,
                        "member": member,
                    }
                )
                if len(preview) < PREVIEW_COUNT:
                    preview.append(image)
                done += 1
            job.ctx.report("generate", done, params.count)
            job.ctx.check()
        if done != params.count:
            raise RuntimeError(f"the engine produced {done} of {params.count} images")
        stored_shards = shards.close()
    except BaseException:
        shards.discard()
        raise
    finally:
        manifest.close()
    job.outputs.put_file("manifest.json", manifest.path)
    job.outputs.put_bytes("grid.png", engine.grid_png(np.stack(preview)))
    return Outcome(
        {
            "count": done,
            "model_id": str(row.id),
            "model_version_hash": model.version_hash,
            "shards": [s.name for s in stored_shards],
            "manifest": "manifest.json",
            "grid": "grid.png",
        }
    )
