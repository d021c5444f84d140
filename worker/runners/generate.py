"""Bulk generation: per-item seeds -> engine.generate in chunks -> PNGs in tar shards, manifest, preview grid.

Item i is seeded `item_seed(seed, first_index + i)` (or `seeds[i]`), so it is the same image whichever job,
chunking, shard size or worker produces it. Chunk N is stored (PNGs, shards, manifest) on a background
thread while chunk N+1 is generated where a core is free for it (`store_in_background`), inline otherwise;
the outputs are the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from shared.specs import GenerateParams
from worker.chunk_pipeline import ChunkPipeline
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


def store_in_background(device: torch.device) -> bool:
    """Whether a thread may store chunks beside the generator without oversubscribing the cores: on an
    accelerator torch's CPU threads wait on the device during the forward pass; on the CPU only when the
    worker leaves a core outside torch's threads (settings' torch_threads)."""
    return device.type != "cpu" or torch.get_num_threads() < len(os.sched_getaffinity(0))


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

    def store(start: int, chunk: np.ndarray) -> int:
        """PNGs of items start.. into the shards and the manifest (on the pipeline's thread)."""
        for offset, png in enumerate(engine.encode_pngs(chunk)):
            i = start + offset
            shard, member = shards.add(first + i, png)
            label = labels[i] if labels else None
            manifest.add(
                {
                    "index": first + i,
                    "seed": seeds[i],
                    "label": label,
                    "params": item_params,
                    "shard": shard,
                    "member": member,
                }
            )
        if len(preview) < PREVIEW_COUNT:
            preview.extend(chunk[: PREVIEW_COUNT - len(preview)].copy())  # not a view pinning the chunk
        return len(chunk)

    pipeline = ChunkPipeline(lambda item: store(*item), background=store_in_background(job.ctx.device))
    generated = 0
    try:
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
            pipeline.submit((generated, chunk))
            generated += len(chunk)
            # Progress counts images stored, not merely generated; the cancel check comes once per chunk.
            job.ctx.report("generate", pipeline.stored, params.count)
            job.ctx.check()
        if generated != params.count:
            raise RuntimeError(f"the engine produced {generated} of {params.count} images")
        done = pipeline.close()
        job.ctx.report("generate", done, params.count)
        stored_shards = shards.close()
    except BaseException:
        pipeline.abort()
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
