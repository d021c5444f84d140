"""How a job worker process is started: its command line and environment, for every launcher.

`python -m worker` (and through it compose), `genq up`, the integration tests and the benchmarks all
build their workers here, so a flag or a thread setting changes in one place.

The shape (see worker/celery_app.py for why): prefork with one *spawned* pool process (CUDA cannot be
used after fork), one job at a time, no prefetch beyond it; no gossip, mingle or event heartbeats,
since the SQL job row, not worker-to-worker chatter, says what runs where.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

JOB_WORKER_APP = "worker.celery_app"


def job_worker_argv(
    queues: Sequence[str], hostname: str, loglevel: str = "INFO", app: str = JOB_WORKER_APP
) -> list[str]:
    """`celery -A <app> worker ...` for one job worker consuming `queues`."""
    return [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "--pool", "prefork", "--pool-start-method", "spawn", "--concurrency", "1",
        "--prefetch-multiplier", "1", "--queues", ",".join(queues), "--hostname", hostname,
        "--loglevel", loglevel, "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


def job_worker_env(
    device: str | None,
    workers_on_host: int = 1,
    index: int = 0,
    environ: Mapping[str, str] = os.environ,
    cpu_count: int | None = None,
) -> dict[str, str]:
    """Environment overrides for worker `index` of `workers_on_host` on one machine.

    `device`: "cpu", a GPU index (the process sees only that GPU), or None to leave the choice to the
    worker (CUDA when present). Values already in `environ` win, except the GPU pinning.
    """
    cores = cpu_count or os.cpu_count() or 1
    env = {
        # The processes share the host's cores.
        "GENQ_TORCH_THREADS": environ.get("GENQ_TORCH_THREADS")
        or str(max(1, cores // max(1, workers_on_host))),
        # Idle intra-op threads sleep instead of spinning: a spinning thread that loses its core to
        # another process slows every step of the one it belongs to.
        "OMP_WAIT_POLICY": environ.get("OMP_WAIT_POLICY") or "PASSIVE",
    }
    metrics_port = int(environ.get("GENQ_WORKER_METRICS_PORT") or 0)
    if metrics_port:  # each process serves its own metrics: consecutive ports from the one given
        env["GENQ_WORKER_METRICS_PORT"] = str(metrics_port + index)
    if device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", GENQ_DEVICE=environ.get("GENQ_DEVICE") or "cpu")
    elif device is not None:
        env.update(CUDA_VISIBLE_DEVICES=device, GENQ_DEVICE="cuda")  # the one visible device
    return env
