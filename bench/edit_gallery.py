"""The README's edit gallery, made from real edit jobs through genq's API.

    python -m bench.edit_gallery                    # docs/edits/*.png; trains the models through the API
    python -m bench.edit_gallery --models /tmp/genq-bench-editing   # registers bench/editing.py's models

Starts the services a production genq runs on (Postgres, Redis, moto's S3 server, one genq worker: see
bench/common.py), trains a CNN, a GAN and a VAE on Fashion-MNIST through POST /v1/jobs with a time budget
each (or, with --models, registers the checkpoints bench/editing.py trained, so the gallery shows the
models its table measures), then submits one edit job per operation and family on the same test images
and downloads what each job wrote. Every picture is one grid, a row per kind: the sources ("before"),
the mask where there is one, and each family's result ("after"), nearest-neighbour magnified and
labelled.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
from PIL import Image

from bench.common import ApiTenant, Services, machine_line, make_tenant, services, wait_for_job
from shared.db import session_factory
from shared.models import TrainedModel
from shared.specs import Family
from shared.storage import S3Store
from worker.engine import api as api_engine
from worker.engine.data import load_builtin
from worker.engine.images import grid_png

SOURCES = [0, 1, 2, 3, 4, 5, 6, 7]  # Fashion-MNIST test images (the models never train on them)
PAIR = [0, 2]  # interpolation ends: an ankle boot and a trouser
MASK = {"top": 7, "left": 7, "bottom": 21, "right": 21}  # the centre 14x14
TARGET = 8  # class swaps and attribute moves toward "Bag"
# operation -> extra edit params
OPERATIONS: dict[str, dict[str, Any]] = {
    "reconstruct": {"steps": 8},
    "inpaint": {"mask": MASK, "steps": 8},
    "class_swap": {"target_label": TARGET, "steps": 8},
    "attribute": {"target_label": TARGET, "strength": 0.5, "steps": 8},
    "interpolate": {"steps": 8},
}


class Api:
    def __init__(self, client: Any, headers: dict[str, str]) -> None:
        self.client, self.headers = client, headers

    def submit(self, kind: str, params: dict[str, Any]) -> str:
        reply = self.client.post("/v1/jobs", json={"kind": kind, "params": params}, headers=self.headers)
        if reply.status_code != 202:
            raise RuntimeError(f"{kind} refused: {reply.status_code} {reply.json}")
        return reply.json["id"]

    def finished(self, job_id: str, timeout: float) -> dict[str, Any]:
        job = wait_for_job(lambda: self.client.get(f"/v1/jobs/{job_id}", headers=self.headers).json, timeout)
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
        return job

    def images(self, job: dict[str, Any]) -> np.ndarray:
        """(N, H, W, C) uint8: the job's output images, from its tar shard, in order."""
        url = next(a["url"] for a in job["artifacts"] if a["name"] == "shards/00000.tar")
        data = requests.get(url, timeout=60).content
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            members = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)
            pictures = [np.asarray(Image.open(archive.extractfile(m))) for m in members]  # type: ignore[arg-type]
        return np.stack([p if p.ndim == 3 else p[..., None] for p in pictures])


def train(api: Api, family: str, seconds: float, options: dict[str, Any]) -> str:
    started = time.monotonic()
    params = {"family": family, "dataset": "fashion-mnist", "max_seconds": seconds, "options": options}
    job = api.finished(api.submit("train", params), timeout=seconds * 4 + 600)
    print(f"  {family} trained through the API in {time.monotonic() - started:.0f} s", flush=True)
    return job["result"]["model_id"]


def register(found: Services, tenant: ApiTenant, family: Family, checkpoint: Path) -> str:
    """A registry row for a checkpoint trained outside the API, its bytes in the object store."""
    data = checkpoint.read_bytes()
    loaded = api_engine.load(data, torch.device("cpu"))
    key = f"tenants/{tenant.id}/models/gallery-{family.value}/model.pt"
    S3Store(found.settings).put_bytes(key, data, "application/octet-stream")
    with session_factory(found.settings.sql_url).begin() as session:
        row = TrainedModel(
            tenant_id=tenant.id, family=family, name=f"gallery-{family.value}", version=1,
            dataset="fashion-mnist", image_size=loaded.image_size, channels=loaded.channels,
            num_classes=loaded.num_classes, class_names=loaded.class_names, checkpoint_key=key,
            checkpoint_sha256=hashlib.sha256(data).hexdigest(), config=loaded.config,
        )  # fmt: skip
        session.add(row)
        session.flush()
        return str(row.id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("docs/edits"))
    parser.add_argument("--cnn-seconds", type=float, default=90)
    parser.add_argument("--gan-seconds", type=float, default=420)
    parser.add_argument("--vae-seconds", type=float, default=180)
    parser.add_argument("--threads", default="2")
    parser.add_argument("--models", type=Path, help="bench/editing.py's cache: register its checkpoints")
    args = parser.parse_args(argv)
    print(f"edit gallery; {machine_line()}", flush=True)
    from api.app import create_app  # the API's imports only here: bench/ modules stay importable alone

    test = load_builtin("fashion-mnist", "test")
    names = test.class_names
    with services({"GENQ_TORCH_THREADS": args.threads}) as found:
        worker = found.start_workers(1)[0]
        worker.wait_ready()
        tenant = make_tenant(found.settings)
        api = Api(create_app(found.settings).test_client(), tenant.headers)
        if args.models is not None:
            from bench.editing import checkpoint_path

            cnn, models = (
                register(found, tenant, Family.cnn, checkpoint_path("cnn", args.models)),
                {
                    name: register(found, tenant, family, checkpoint_path(family.value, args.models))
                    for name, family in (("GAN", Family.gan), ("VAE", Family.vae))
                },
            )
        else:
            cnn = train(api, "cnn", args.cnn_seconds, {"epochs": 1000})
            models = {
                "GAN": train(api, "gan", args.gan_seconds, {"max_steps": 1_000_000}),
                "VAE": train(api, "vae", args.vae_seconds, {"max_steps": 1_000_000}),
            }
        args.out.mkdir(parents=True, exist_ok=True)
        sources = test.images[SOURCES].permute(0, 2, 3, 1).numpy()
        for operation, extra in OPERATIONS.items():
            indices = PAIR if operation == "interpolate" else SOURCES
            rows, labels = [], []
            if operation == "interpolate":
                pair = test.images[PAIR].permute(0, 2, 3, 1).numpy()
                ends = np.zeros((8, *pair.shape[1:]), np.uint8)
                ends[0], ends[-1] = pair[0], pair[1]
                rows.append(ends)
                labels.append("ends")
            else:
                rows.append(sources)
                labels.append("before")
            if operation == "inpaint":
                masked = sources.copy()
                masked[:, MASK["top"] : MASK["bottom"], MASK["left"] : MASK["right"]] = 128
                rows.append(masked)
                labels.append("mask")
            for family, model_id in models.items():
                params = {
                    "model_id": model_id,
                    "operation": operation,
                    "source": {"dataset": "fashion-mnist", "split": "test", "indices": indices},
                    "classifier_id": cnn,
                    **extra,
                }
                job = api.finished(api.submit("edit", params), timeout=1800)
                rows.append(api.images(job)[: len(rows[0])])
                labels.append(f"{family}")
                metrics = {k: round(v, 3) for k, v in (job["result"].get("metrics") or {}).items()}
                print(f"  {operation} {family}: {metrics}", flush=True)
            picture = grid_png(np.concatenate(rows), nrow=len(rows[0]), row_labels=labels)
            (args.out / f"{operation}.png").write_bytes(picture)
        target = names[TARGET]
        print(f"wrote {args.out}/*.png (class edits toward {target!r})", flush=True)


if __name__ == "__main__":
    main()
