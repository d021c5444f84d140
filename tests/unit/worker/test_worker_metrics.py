"""What a delivery did, judged from the job row after it (worker.metrics.outcome_of); training rates."""

from __future__ import annotations

import uuid

import pytest

from shared.models import Job, JobStatus
from shared.specs import JobKind
from worker.metrics import Started, outcome_of, training_rate

BEFORE = Started(monotonic=0.0, attempts_before=1, owner_prefix="w1@host:123:")


def job(status: JobStatus, attempts: int, owner: str | None, **extra: object) -> Job:
    return Job(
        id=uuid.uuid4(), kind=JobKind.train, params={}, status=status, attempts=attempts, lease_owner=owner,
        **extra,
    )  # fmt: skip


def test_outcome_of_a_delivery() -> None:
    assert outcome_of(job(JobStatus.succeeded, 2, "w1@host:123:ab12"), BEFORE) == "succeeded"
    assert outcome_of(job(JobStatus.canceled, 2, "w1@host:123:ab12"), BEFORE) == "canceled"
    # Not claimed by this delivery: attempts did not move (a repeated message, a canceled job).
    assert outcome_of(job(JobStatus.succeeded, 1, "w2@host:9:cd34"), BEFORE) == "skipped"
    assert outcome_of(None, BEFORE) == "skipped"
    # Claimed, then taken over (requeued by the sweeper, finished by another worker's attempt).
    assert outcome_of(job(JobStatus.queued, 2, None), BEFORE) == "lost"
    assert outcome_of(job(JobStatus.succeeded, 3, "w2@host:9:cd34"), BEFORE) == "lost"
    # Another process of the same host: pid differs.
    assert outcome_of(job(JobStatus.failed, 2, "w1@host:1234:ab12"), BEFORE) == "lost"


def test_training_rate_from_result_or_last_progress() -> None:
    gan = job(JobStatus.succeeded, 1, "x", result={"metrics": {"samples_per_sec": 812.5}})
    assert training_rate(gan) == 812.5
    cnn = job(
        JobStatus.succeeded, 1, "x", result={"metrics": {}}, progress={"metrics": {"samples_per_sec": 90}}
    )
    assert training_rate(cnn) == 90.0
    assert (
        training_rate(job(JobStatus.succeeded, 1, "x", result={"metrics": {"samples_per_sec": True}})) is None
    )


def test_each_worker_process_gets_its_own_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.__main__ import worker_commands

    monkeypatch.setenv("GENQ_WORKER_METRICS_PORT", "9400")
    ports = [env["GENQ_WORKER_METRICS_PORT"] for env, _ in worker_commands(["0", "1", "2"], ["q"])]
    assert ports == ["9400", "9401", "9402"]
    monkeypatch.delenv("GENQ_WORKER_METRICS_PORT")
    assert all("GENQ_WORKER_METRICS_PORT" not in env for env, _ in worker_commands(["0"], ["q"]))


def test_gpu_gauges_read_nvml_at_scrape_time() -> None:
    from types import SimpleNamespace

    from worker.metrics import GpuCollector

    class FakeNvml:  # NVML's calls as pynvml exposes them
        def nvmlDeviceGetMemoryInfo(self, handle: object) -> SimpleNamespace:
            return SimpleNamespace(used=3 * 2**30, total=80 * 2**30)

        def nvmlDeviceGetUtilizationRates(self, handle: object) -> SimpleNamespace:
            return SimpleNamespace(gpu=37)

    gauges = {m.name: m.samples for m in GpuCollector(FakeNvml(), [("0", object())]).collect()}
    assert gauges["genq_gpu_memory_used_bytes"][0].value == 3 * 2**30
    assert gauges["genq_gpu_memory_total_bytes"][0].labels == {"gpu": "0"}
    assert gauges["genq_gpu_utilization_ratio"][0].value == 0.37
