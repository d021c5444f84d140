"""Throughput benchmark: genq's training and generation paths beside bare loops of the same nets.

    python -m bench.throughput                                   # all families, batch sizes 64/256/1024
    python -m bench.throughput --families gan --batch-sizes 64 --steps 10

Training: samples/s of each family's `train()` in its steady state (timed between two progress reports,
after warm-up steps), beside a bare loop of the same nets, loss and optimiser with none of genq's
machinery (no progress, cancel checks, checkpoints, deterministic batch order or loss history).

Generation: images/s of genq's bulk path - `generate()` in chunks of the batch size, PNG encoding, tar
shards and the manifest written to a local store - beside a bare forward pass of the same generator
(decoder for the VAE) on the same number of latents. Ratios near 1 mean the machinery is nearly free.

    python -m bench.throughput --job 20000                       # the generate job's runner, end to end

`--job N`: the worker's generate runner itself (`worker/runners/generate.run`: seeds, engine, PNGs, tar
shards uploaded, manifest, preview grid, progress and cancel checks), one job of N images stored in a
local object store, beside a bare forward pass of the same GAN (`genq demo`'s shape: width 32, latent 64,
conditional) at the runner's chunk size. Only the
registry lookup and the checkpoint load are stubbed (the model is handed in).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch
import torch.nn.functional as F

from genq.demo import DEMO_GAN_OPTIONS
from shared.settings import Settings
from shared.storage import LocalStore
from worker.engine import api, cnn, gan, vae
from worker.engine.data import load_builtin
from worker.engine.images import encode_pngs
from worker.engine.imageset import ImageSet, to_unit_range
from worker.engine.latents import item_seed
from worker.engine.runtime import Progress, RunContext, configure_threads, training_autocast, tune_allocator
from worker.engine.vae_inference import likelihood_params
from worker.engine.vae_loss import gaussian_kl, reconstruction_nll, reparameterise
from worker.outputs import JobOutputs
from worker.runners import generate as generate_runner
from worker.runners.base import JobRun
from worker.shards import ManifestWriter, ShardWriter

CPU = torch.device("cpu")


def genq_training_rate(family: str, data: ImageSet, batch_size: int, warmup: int, steps: int) -> float:
    """Samples/s between the progress reports of step `warmup` and step `warmup + steps`."""
    stamps: dict[int, float] = {}

    def on_progress(progress: Progress) -> None:
        if progress.phase == "train" and progress.step in (warmup, warmup + steps):
            stamps[progress.step] = time.perf_counter()

    options = {"batch_size": batch_size, "max_steps": warmup + steps}
    api.train(family, options, data, RunContext(on_progress=on_progress, device=CPU))
    return steps * batch_size / (stamps[warmup + steps] - stamps[warmup])


def bare_cnn_step(config: cnn.Config, data: ImageSet) -> Callable[[torch.Tensor], None]:
    model = cnn.build_model(config).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True)
    assert data.labels is not None
    labels = data.labels

    def step(index: torch.Tensor) -> None:
        x = to_unit_range(data.images[index]).contiguous(memory_format=torch.channels_last)
        with training_autocast(CPU):  # the same precision as genq's loop
            loss = F.cross_entropy(model(x), labels[index], label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bare_gan_step(config: gan.Config, data: ImageSet) -> Callable[[torch.Tensor], None]:
    net_g, net_d = gan.build_generator(config), gan.build_discriminator(config)
    ema = gan.build_generator(config).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(net_g.parameters(), lr=config.lr, betas=config.betas)
    opt_d = torch.optim.Adam(net_d.parameters(), lr=config.lr_d or config.lr, betas=config.betas)
    labels = data.labels if config.num_classes else None

    def step(index: torch.Tensor) -> None:
        real = to_unit_range(data.images[index])
        y = labels[index] if labels is not None else None
        with training_autocast(CPU):
            fake = net_g(
                torch.randn(len(index), config.latent_dim), net_g.class_vectors(y) if y is not None else None
            )
            both = torch.cat([y, y]) if y is not None else None
            scores = net_d(torch.cat([real, fake.detach()]), both)
            loss_d = gan.hinge_d_loss(scores[: len(real)].float(), scores[len(real) :].float())
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        net_d.requires_grad_(False)
        with training_autocast(CPU):
            loss_g = gan.hinge_g_loss(net_d(fake, y).float())
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        net_d.requires_grad_(True)
        gan.update_ema(ema, net_g, config.ema_decay)

    return step


def bare_vae_step(config: vae.Config, data: ImageSet) -> Callable[[torch.Tensor], None]:
    model = vae.build_model(config).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    params = likelihood_params(model)
    labels = data.labels if config.num_classes else None

    def step(index: torch.Tensor) -> None:
        x = to_unit_range(data.images[index]).contiguous(memory_format=torch.channels_last)
        vectors = model.label_vectors(labels[index] if labels is not None else None)
        with vae.training_autocast_for(CPU, True):  # the same precision as genq's loop
            mean, logvar = model.encode(x, vectors)
            mean, logvar = mean.float(), logvar.float()
            decoded = model.decode(reparameterise(mean, logvar, torch.randn_like(mean)), vectors).float()
        loss = (reconstruction_nll(config.likelihood, x, decoded, params) + gaussian_kl(mean, logvar)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


BARE_STEPS = {"cnn": bare_cnn_step, "gan": bare_gan_step, "vae": bare_vae_step}


def bare_training_rate(family: str, data: ImageSet, batch_size: int, warmup: int, steps: int) -> float:
    module = api.family_module(family)
    config = module.Config.from_options({"batch_size": batch_size}, data)
    torch.manual_seed(0)
    step = BARE_STEPS[family](config, data)
    for _ in range(warmup):
        step(torch.randint(len(data), (batch_size,)))
    start = time.perf_counter()
    for _ in range(steps):
        step(torch.randint(len(data), (batch_size,)))
    return steps * batch_size / (time.perf_counter() - start)


def genq_generation_rate(model: api.LoadedModel, count: int, chunk: int, workdir: Path) -> float:
    """The worker's bulk path without the network: generate -> PNG -> tar shards + manifest on disk."""
    settings = Settings(data_dir=workdir, storage_backend="local")
    outputs = JobOutputs(LocalStore(settings), uuid.uuid4(), uuid.uuid4(), attempt=1)
    seeds = [item_seed(0, i) for i in range(count)]
    labels = [i % model.num_classes for i in range(count)] if model.num_classes else None
    start = time.perf_counter()
    shards = ShardWriter(outputs, 1000, workdir)
    manifest = ManifestWriter(workdir / "manifest.json", {"count": count})
    done = 0
    for images in api.generate(model, seeds, labels, chunk_size=chunk):
        for png in encode_pngs(images):
            shard, member = shards.add(done, png)
            manifest.add({"index": done, "seed": seeds[done], "shard": shard, "member": member})
            done += 1
    shards.close()
    manifest.close()
    return count / (time.perf_counter() - start)


def genq_job_rate(model: api.LoadedModel, count: int, workdir: Path, background: bool | None = None) -> float:
    """Images/s of one generate job through the worker's runner, running -> outputs stored. `background`:
    force chunks to be stored on the pipeline's thread (True) or inline (False); None: the runner's choice."""
    settings = Settings(data_dir=workdir, storage_backend="local")
    store = LocalStore(settings)
    tenant, job_id = uuid.uuid4(), uuid.uuid4()
    row = SimpleNamespace(id=uuid.uuid4(), name="bench", version=1)
    params = {"model_id": str(row.id), "count": count, "seed": 0}
    if model.num_classes:
        params["labels"] = [i % model.num_classes for i in range(count)]
    scratch = workdir / f"job-{job_id}"
    scratch.mkdir()
    job = JobRun(
        job_id=job_id,
        tenant_id=tenant,
        params=params,
        checkpoint_key=None,
        lease=None,  # type: ignore[arg-type]  # the runner does not touch it
        ctx=RunContext(device=CPU),
        settings=settings,
        sessions=None,  # type: ignore[arg-type]  # model_row is stubbed
        store=store,
        outputs=JobOutputs(store, tenant, job_id, attempt=1),
        workdir=scratch,
    )
    choice = generate_runner.store_in_background if background is None else (lambda _: background)
    with (
        mock.patch.object(generate_runner, "model_row", lambda *_: row),
        mock.patch.object(generate_runner, "load_model", lambda *_: model),
        mock.patch.object(generate_runner, "store_in_background", choice),
    ):
        start = time.perf_counter()
        outcome = generate_runner.run(job)
        elapsed = time.perf_counter() - start
    assert outcome.result["count"] == count
    return count / elapsed


@torch.inference_mode()
def bare_generation_rate(model: api.LoadedModel, count: int, chunk: int) -> float:
    """The same generator (VAE: decoder) on random latents in batches of `chunk`, nothing else."""
    net = model.module
    k = model.num_classes
    start = time.perf_counter()
    for offset in range(0, count, chunk):
        n = min(chunk, count - offset)
        y = torch.arange(offset, offset + n) % k if k else None
        if model.family == "gan":
            net(torch.randn(n, net.latent_dim), net.class_vectors(y) if y is not None else None)
        else:
            net.decode(torch.randn(n, model.config["latent_dim"]), net.label_vectors(y))
    return count / (time.perf_counter() - start)


def tiny_trained(family: str, data: ImageSet, options: dict[str, object] | None = None) -> api.LoadedModel:
    output = api.train(family, {"max_steps": 2, **(options or {})}, data, RunContext(device=CPU))
    return api.load(output.checkpoint, CPU)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default="cnn,gan,vae")
    parser.add_argument("--batch-sizes", default="64,256,1024")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--images", type=int, default=4096, help="images per generation measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; medians shown")
    parser.add_argument("--job", type=int, default=0, help="only: one generate job of this many images")
    args = parser.parse_args(argv)
    print(f"torch threads: {configure_threads(args.threads)}", flush=True)
    tune_allocator()  # as in worker processes
    families = args.families.split(",")
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    data = load_builtin("fashion-mnist", "train")
    if args.job:
        job_vs_bare(tiny_trained("gan", data, DEMO_GAN_OPTIONS), args.job, args.repeats)
        return

    print(f"training samples/s (genq train() vs bare loop of the same nets; median of {args.repeats})")
    for family in families:
        for size in sizes:
            genq, bare = interleaved(
                lambda f=family, s=size: genq_training_rate(f, data, s, args.warmup, args.steps),
                lambda f=family, s=size: bare_training_rate(f, data, s, args.warmup, args.steps),
                args.repeats,
            )
            report(f"{family} batch {size:>5}", genq, bare)

    print("generation images/s (genq generate + PNG + shards + manifest vs bare forward pass)", flush=True)
    for family in (f for f in families if f in ("gan", "vae")):
        model = tiny_trained(family, data)
        for size in sizes:
            with tempfile.TemporaryDirectory() as workdir:
                genq, bare = interleaved(
                    lambda s=size, m=model: genq_generation_rate(m, args.images, s, Path(workdir)),
                    lambda s=size, m=model: bare_generation_rate(m, args.images, s),
                    args.repeats,
                )
            report(f"{family} chunk {size:>5}", genq, bare)


def job_vs_bare(model: api.LoadedModel, count: int, repeats: int) -> None:
    """The job with chunks stored inline and on the pipeline's thread, each beside the bare pass (all
    three alternating, so a burst of load hits them alike)."""
    rows = generate_runner.CHUNK_SIZE
    print(f"load average before: {os.getloadavg()}", flush=True)
    print(f"generate job of {count} images (runner, outputs stored) vs bare forward pass at {rows} rows")
    print(f"  the runner's own choice here: background={generate_runner.store_in_background(CPU)}")
    rates: dict[str, list[float]] = {"bare": [], "inline": [], "background": []}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(repeats):
            rates["bare"].append(bare_generation_rate(model, count, rows))
            rates["inline"].append(genq_job_rate(model, count, Path(workdir), background=False))
            rates["background"].append(genq_job_rate(model, count, Path(workdir), background=True))
    report(f"gan job {count} inline    ", rates["inline"], rates["bare"])
    report(f"gan job {count} background", rates["background"], rates["bare"])
    print(f"load average after: {os.getloadavg()}", flush=True)


def interleaved(
    genq: Callable[[], float], bare: Callable[[], float], repeats: int
) -> tuple[list[float], list[float]]:
    """Alternate the two measurements `repeats` times each, so a burst of load hits both alike."""
    genq_rates, bare_rates = [], []
    for _ in range(repeats):
        bare_rates.append(bare())
        genq_rates.append(genq())
    return genq_rates, bare_rates


def report(name: str, genq: list[float], bare: list[float]) -> None:
    genq_median, bare_median = statistics.median(genq), statistics.median(bare)
    spread = f"genq {min(genq):.0f}-{max(genq):.0f}, bare {min(bare):.0f}-{max(bare):.0f}"
    print(
        f"  {name}: genq {genq_median:8.1f}  bare {bare_median:8.1f}  "
        f"ratio {genq_median / bare_median:.3f}  ({spread})",
        flush=True,
    )


if __name__ == "__main__":
    main()
