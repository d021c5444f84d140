"""`genq demo`: the main job end to end on the embedded default, in one command.

Starts the embedded system (or uses one already running), trains a small class-conditional GAN on
Fashion-MNIST within a time budget, submits a bulk generation batch (one job per class label), polls it
with a progress bar, downloads everything to ./genq-out/ and says where the grids, shards and manifests
are. Stops what it started.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from genq.client import ApiError, GenqClient
from genq.commands import EXIT_OK, download_job, scalar_metrics, wait_for
from genq.detached import start_detached, stop_running
from genq.embedded import EmbeddedConfig
from genq.params import CommandError
from genq.progress import format_duration
from genq.state import resolve_connection

NUM_CLASSES = 10  # Fashion-MNIST
# Small enough that the default budget trains it to recognisable clothes of every class on two CPU cores
# (the steps it reaches: BENCHMARKS.md, "The demo's GAN").
DEMO_GAN_OPTIONS = {"conditional": True, "latent_dim": 64, "width": 32, "batch_size": 64}


def running_client(args: argparse.Namespace) -> GenqClient | None:
    """A client for an embedded system that already answers /readyz, with a key; else None."""
    connection = resolve_connection(args.api_url, args.api_key, Path(args.data_dir))
    client = GenqClient(connection.api_url, connection.api_key, timeout=10)
    if not connection.api_key:
        return None
    try:
        client.ready()
    except ApiError:
        return None
    return client


def check_dataset(out: TextIO) -> bool:
    from shared.settings import Settings

    directory = Settings().fashion_mnist_dir
    if (directory / "train-images-idx3-ubyte.gz").is_file():
        return True
    out.write(
        f"genq demo: Fashion-MNIST is not in {directory}.\n"
        "  Install it with `sudo apt-get install -y dataset-fashion-mnist` (or run `make demo`),\n"
        "  or point GENQ_FASHION_MNIST_DIR at a directory holding the four idx .gz files.\n"
    )
    return False


def artifact_summary(paths: list[Path]) -> dict[str, list[Path]]:
    """Downloaded files by what they are."""
    groups: dict[str, list[Path]] = {"grids": [], "manifests": [], "shards": [], "other": []}
    for path in paths:
        name = path.name
        if name == "manifest.json":
            groups["manifests"].append(path)
        elif name.endswith(".png"):
            groups["grids"].append(path)
        elif name.endswith((".tar", ".zip", ".npz")) or "shard" in str(path):
            groups["shards"].append(path)
        else:
            groups["other"].append(path)
    return groups


def model_id_of(job: dict[str, Any]) -> str:
    result = job.get("result") or {}
    model_id = result.get("model_id") or job.get("model_id")
    if not model_id:
        raise ApiError(0, "no_model", f"training job {job.get('id')} finished without a model id")
    return str(model_id)


def run_demo(args: argparse.Namespace, client: GenqClient, out: TextIO) -> int:
    started = time.monotonic()
    output = Path(args.out)
    out.write(f"[1/4] training a conditional GAN on Fashion-MNIST for {args.train_seconds:g}s\n")
    train = client.submit_job(
        "train",
        {
            "family": "gan",
            "dataset": "fashion-mnist",
            "name": "demo-fashion-gan",
            "max_seconds": args.train_seconds,
            "options": DEMO_GAN_OPTIONS,
        },
    )
    out.write(f"      job {train['id']}\n")
    code = wait_for(client, "job", str(train["id"]), out)
    if code != EXIT_OK:
        return code
    train_job = client.get_job(str(train["id"]))
    model_id = model_id_of(train_job)
    train_paths = download_job(client, train_job, output / "train")

    labels = list(range(NUM_CLASSES))
    out.write(f"[2/4] generating {args.count} images for each of {NUM_CLASSES} classes (one job per class)\n")
    batch = client.submit_batch(
        {
            "template": {"kind": "generate", "params": {"model_id": model_id, "count": args.count}},
            "seeds": labels,
            "labels": labels,
        }
    )
    out.write(f"      batch {batch['id']}\n")
    code = wait_for(client, "batch", str(batch["id"]), out)
    if code != EXIT_OK:
        return code

    out.write(f"[3/4] downloading to {output}/\n")
    generated: list[Path] = []
    for listed in client.iter_jobs(batch=str(batch["id"])):
        job = client.get_job(str(listed["id"]))
        label = (job.get("params") or {}).get("labels")
        folder = f"class-{label}" if isinstance(label, int) else str(job["id"])
        generated.extend(download_job(client, job, output / "generated" / folder))

    model = client.get_model(model_id)
    summary = artifact_summary(generated)
    train_grids = [p for p in train_paths if p.suffix == ".png"]
    out.write("[4/4] done in " + format_duration(time.monotonic() - started) + "\n")
    out.write(f"  model:          {model_id} ({model.get('name')} v{model.get('version')})\n")
    out.write(f"  model metrics:  {json.dumps(scalar_metrics(model.get('metrics') or {}), sort_keys=True)}\n")
    for path in train_grids:
        out.write(f"  training image: {path}\n")
    out.write(f"  preview grids:  {len(summary['grids'])} in {output / 'generated'}/class-*/\n")
    for path in summary["grids"][:3]:
        out.write(f"                  {path}\n")
    out.write(f"  shards:         {len(summary['shards'])} files, e.g. {_first(summary['shards'])}\n")
    out.write(f"  manifests:      {len(summary['manifests'])} files, e.g. {_first(summary['manifests'])}\n")
    return EXIT_OK


def _first(paths: list[Path]) -> str:
    return str(paths[0]) if paths else "-"


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    if not check_dataset(out):
        return 1
    client = running_client(args)
    process: subprocess.Popen[bytes] | None = None
    data_dir = Path(args.data_dir)
    if client is None:
        config = EmbeddedConfig(data_dir=data_dir, port=args.port, workers=args.workers)
        out.write(f"starting genq (embedded, {args.workers} worker(s), data in {data_dir}/) ...\n")
        out.flush()
        try:
            process = start_detached(config)
        except CommandError as exc:
            sys.stderr.write(f"genq demo: {exc}\n")
            return 1
        connection = resolve_connection(None, None, data_dir)
        client = GenqClient(connection.api_url, connection.api_key)
        out.write(f"genq is up at {connection.api_url} (logs in {data_dir}/logs/)\n")
    else:
        out.write(f"using the genq already running at {client.base_url}\n")
    try:
        return run_demo(args, client, out)
    finally:
        if process is not None:
            out.write("stopping genq ...\n")
            out.flush()
            stop_running(data_dir)
            process.wait(timeout=30)
