"""`python -m worker`: one Celery worker process per GPU, each pinned to its GPU with CUDA_VISIBLE_DEVICES.

    python -m worker                      # every GPU nvidia-smi lists (or one CPU worker when none)
    python -m worker --gpus 0,2           # these GPUs only
    python -m worker --queues genq.train  # a pool dedicated to training
    python -m worker --print              # show the command lines and exit
    python -m worker --hostname celery@%h # one process with this node name (a compose replica)

Each process is `celery -A worker.celery_app worker` with one spawned pool process running one job at a
time (see worker/celery_app.py for why); its command line and environment come from
shared/worker_launch.py, as every launcher's do. The processes share the host's cores
(GENQ_TORCH_THREADS each, unless set). If one exits, the others are stopped and this command exits with
its status, so a service manager (compose, systemd) restarts the set.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

from shared.settings import get_settings
from shared.worker_launch import job_worker_argv, job_worker_env


def detect_gpus() -> list[str]:
    """GPU indices: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists (no torch import here)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    listed = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return (
        [line.strip() for line in listed.stdout.splitlines() if line.strip()]
        if listed.returncode == 0
        else []
    )


def worker_commands(
    gpus: list[str],
    queues: list[str],
    loglevel: str = "INFO",
    cpu_count: int | None = None,
    hostname: str | None = None,
) -> list[tuple[dict[str, str], list[str]]]:
    """(environment overrides, argv) of each worker process: one per GPU, or one CPU worker. `hostname`
    names the node when there is one process (a compose replica); by default cpu@%h / gpuN@%h."""
    slots = gpus or ["cpu"]
    if hostname and len(slots) > 1:
        raise ValueError("--hostname names one worker process; give --gpus with one GPU")
    return [
        (
            job_worker_env(slot, len(slots), index, cpu_count=cpu_count),
            job_worker_argv(queues, hostname or ("cpu@%h" if slot == "cpu" else f"gpu{slot}@%h"), loglevel),
        )
        for index, slot in enumerate(slots)
    ]


def supervise(commands: list[tuple[dict[str, str], list[str]]]) -> int:
    processes = [subprocess.Popen(argv, env={**os.environ, **env}) for env, argv in commands]

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, forward)
    while all(process.poll() is None for process in processes):
        time.sleep(0.5)
    code = next(p.returncode for p in processes if p.returncode is not None)
    forward(signal.SIGTERM, None)  # warm shutdown: running jobs finish, or their leases expire
    for process in processes:
        process.wait()
    return code


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m worker", description="One Celery worker per GPU.")
    parser.add_argument("--gpus", help="comma-separated GPU indices (default: all; none: one CPU worker)")
    parser.add_argument("--queues", default=f"{settings.train_queue},{settings.sample_queue}")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument(
        "--hostname", help="the node name of the one worker process (default: cpu@%%h, gpuN@%%h)"
    )
    parser.add_argument("--print", action="store_true", help="print the command lines and exit")
    args = parser.parse_args(argv)
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else detect_gpus()
    try:
        commands = worker_commands(gpus, args.queues.split(","), args.loglevel, hostname=args.hostname)
    except ValueError as error:
        parser.error(str(error))
    if args.print:
        for env, command in commands:
            print(" ".join([*(f"{k}={v}" for k, v in env.items()), *command]))
        return 0
    return supervise(commands)


if __name__ == "__main__":
    sys.exit(main())
