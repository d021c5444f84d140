"""The one worker command line and environment that every launcher uses."""

from __future__ import annotations

import sys

from shared.worker_launch import job_worker_argv, job_worker_env


def test_the_command_line_is_the_gpu_worker_shape() -> None:
    argv = job_worker_argv(["genq.train", "genq.sample"], "w1@%h")
    assert argv[:6] == [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker"]
    line = " ".join(argv)
    for flags in (
        "--pool prefork",
        "--pool-start-method spawn",
        "--concurrency 1",
        "--prefetch-multiplier 1",
    ):
        assert flags in line
    assert argv[argv.index("--queues") + 1] == "genq.train,genq.sample"
    assert argv[argv.index("--hostname") + 1] == "w1@%h"
    assert job_worker_argv(["q"], "b@%h", app="bench.queue_latency")[4] == "bench.queue_latency"


def test_the_environment_shares_the_cores_and_pins_devices() -> None:
    cpu = job_worker_env("cpu", workers_on_host=2, environ={}, cpu_count=8)
    assert cpu == {
        "GENQ_TORCH_THREADS": "4",
        "OMP_WAIT_POLICY": "PASSIVE",
        "CUDA_VISIBLE_DEVICES": "",
        "GENQ_DEVICE": "cpu",
    }
    gpu = job_worker_env(
        "3", workers_on_host=4, index=1, environ={"GENQ_WORKER_METRICS_PORT": "9400"}, cpu_count=16
    )
    assert (gpu["CUDA_VISIBLE_DEVICES"], gpu["GENQ_DEVICE"], gpu["GENQ_TORCH_THREADS"]) == ("3", "cuda", "4")
    assert gpu["GENQ_WORKER_METRICS_PORT"] == "9401"  # consecutive ports from the one given
    unpinned = job_worker_env(None, environ={"GENQ_TORCH_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"})
    assert unpinned == {"GENQ_TORCH_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}  # explicit values win
