"""The GPU worker shape: spawn pool, one job at a time, no prefetch; one process per GPU; no torch in the
worker's main process or the sweeper."""

from __future__ import annotations

import subprocess
import sys

from shared.queue import TASK_NAMES
from tests.conftest import ROOT
from worker.__main__ import worker_commands


def test_celery_app_settings() -> None:
    from worker.celery_app import app

    conf = app.conf
    assert (conf.worker_pool, conf.worker_pool_start_method) == ("prefork", "spawn")
    assert (conf.worker_concurrency, conf.worker_prefetch_multiplier) == (1, 1)
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.task_ignore_result
    queues = {q.name: (q.exchange.name, q.routing_key) for q in conf.task_queues}
    assert queues == {name: (name, name) for name in queues} and len(queues) == 2


def test_every_job_kind_has_a_task() -> None:
    import worker.tasks  # noqa: F401
    from worker.celery_app import app

    assert set(TASK_NAMES.values()) <= set(app.tasks)


def test_one_process_per_gpu() -> None:
    commands = worker_commands(["0", "3"], ["genq.train"], cpu_count=16)
    assert [env["CUDA_VISIBLE_DEVICES"] for env, _ in commands] == ["0", "3"]
    for env, argv in commands:
        assert env["GENQ_DEVICE"] == "cuda" and env["GENQ_TORCH_THREADS"] == "8"
        line = " ".join(argv)
        assert "-A worker.celery_app worker" in line and "--pool-start-method spawn" in line
        assert "--concurrency 1" in line and "--queues genq.train" in line
    assert commands[1][1][commands[1][1].index("--hostname") + 1] == "gpu3@%h"


def test_no_gpu_means_one_cpu_worker() -> None:
    [(env, argv)] = worker_commands([], ["a", "b"], cpu_count=4)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["GENQ_TORCH_THREADS"] == "4"
    assert "a,b" in argv


def test_main_process_and_sweeper_do_not_import_torch() -> None:
    modules = "worker.celery_app, worker.tasks, worker.sweeper, worker.__main__"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
