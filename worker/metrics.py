"""A worker's Prometheus metrics, served by the worker itself on `GENQ_WORKER_METRICS_PORT` (0: off).

A worker is two processes: the main one (consumes messages, runs the sweeper) and the spawned pool
process that runs the jobs. Both write their samples to one directory of their own
(prometheus_client's multiprocess mode: `PROMETHEUS_MULTIPROC_DIR`, made here before the pool process is
spawned, which inherits it), and the main process serves the sum with `start_http_server`.

What is recorded, and from where (Celery signals connected below, so the job code stays free of it):
- jobs run by kind and outcome, their run time and their wait in the queue: `task_prerun` /
  `task_postrun` in the pool process, the outcome read back from the job row (SQL is the truth);
- images generated, training samples per second: from the finished row's result and progress;
- lease renewals (`worker.lease`), sweeper settlements (`worker.sweeper`) and scheduler passes
  (`worker.scheduler`: messages sent per queue, pass time, which worker's scheduler is active): counted
  where they happen;
- GPU memory and utilisation, when NVML (nvidia-ml-py) finds a GPU: read at scrape time.

prometheus_client picks its storage when it is first imported, so nothing here imports it at module level:
the multiprocess directory must be in the environment first.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from celery import signals
from sqlalchemy import select

from shared.db import session_factory
from shared.models import TERMINAL_STATUSES, Job
from shared.settings import get_settings
from shared.specs import JobKind

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Jobs run from seconds (a small sampling batch) to hours (training with a time budget).
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200)
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class Metrics:
    """The worker's metric objects; made on first use, after the storage choice (see the module doc)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.jobs = Counter(
            "genq_worker_jobs", "Job deliveries handled, by kind and outcome "
            "(succeeded, failed, canceled; lost: the attempt lost its lease; skipped: not queued any more)",
            ["kind", "outcome"],
        )  # fmt: skip
        self.duration = Histogram(
            "genq_job_duration_seconds", "Run time of a job attempt on this worker, by kind and outcome",
            ["kind", "outcome"], buckets=DURATION_BUCKETS,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "genq_job_queue_wait_seconds", "Time from submission to the start of the attempt, by kind",
            ["kind"], buckets=WAIT_BUCKETS,
        )  # fmt: skip
        self.images = Counter("genq_images_generated", "Images made by generate and edit jobs", ["kind"])
        self.samples_per_second = Gauge(
            "genq_training_samples_per_second", "Training throughput of the last training job, by family",
            ["family"], multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.lease_renewals = Counter(
            "genq_lease_renewals", "Lease renewals by result (renewed, lost, error)", ["result"]
        )
        self.sweeper = Counter(
            "genq_sweeper_jobs",
            "Jobs the sweeper settled, by action (requeued, exhausted: failed after max attempts, "
            "canceled, republished: sent but lost by the broker, held again for the scheduler)",
            ["action"],
        )
        self.dispatched = Counter(
            "genq_scheduler_dispatched", "Job messages the scheduler sent, by queue", ["queue"]
        )
        self.scheduler_pass = Histogram(
            "genq_scheduler_pass_seconds", "Time of one scheduler pass (reads, choice, marks, sends)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )  # fmt: skip
        self.scheduler_active = Gauge(
            "genq_scheduler_active", "1 on the worker whose scheduler holds the lock, else 0",
            multiprocess_mode="livemax",
        )  # fmt: skip


@cache
def metrics() -> Metrics:
    return Metrics()


# ---------------------------------------------------------------------------------------------------
# Hooks called from the worker's own code


def lease_renewed(result: str) -> None:
    metrics().lease_renewals.labels(result).inc()


def swept(requeued: int, exhausted: int, canceled: int, republished: int) -> None:
    counters = metrics().sweeper
    counts = {"requeued": requeued, "exhausted": exhausted, "canceled": canceled, "republished": republished}
    for action, count in counts.items():
        if count:
            counters.labels(action).inc(count)


def scheduled(dispatched: dict[str, int], seconds: float) -> None:
    m = metrics()
    m.scheduler_pass.observe(seconds)
    for queue, count in dispatched.items():
        m.dispatched.labels(queue).inc(count)


def scheduler_active(active: bool) -> None:
    metrics().scheduler_active.set(1 if active else 0)


# ---------------------------------------------------------------------------------------------------
# Job outcomes, from Celery's task signals in the pool process


@dataclass(frozen=True)
class Started:
    monotonic: float
    attempts_before: int
    owner_prefix: str  # worker.execution names lease owners "<hostname>:<pid>:<random>"


_started: dict[str, Started] = {}


def _row(job_id: str) -> Job | None:
    try:
        job_uuid = uuid.UUID(job_id)
    except ValueError:
        return None
    with session_factory(get_settings().sql_url)() as session:
        return session.scalar(select(Job).where(Job.id == job_uuid))


def outcome_of(job: Job | None, before: Started) -> str:
    """What this delivery did, from the row after it: a claim raised `attempts`, a finish by this attempt
    left a terminal status with this process's lease owner."""
    if job is None or job.attempts <= before.attempts_before:
        return "skipped"
    owned = (job.lease_owner or "").startswith(before.owner_prefix)
    if owned and job.status in TERMINAL_STATUSES:
        return job.status.value
    return "lost"


def record_finished(job: Job, outcome: str, seconds: float) -> None:
    m = metrics()
    kind = job.kind.value
    m.jobs.labels(kind, outcome).inc()
    if outcome == "skipped":
        return
    m.duration.labels(kind, outcome).observe(seconds)
    if job.started_at is not None and job.created_at is not None:
        m.queue_wait.labels(kind).observe(max(0.0, (job.started_at - job.created_at).total_seconds()))
    if outcome != "succeeded":
        return
    result = job.result or {}
    if job.kind in (JobKind.generate, JobKind.edit) and isinstance(result.get("count"), int):
        m.images.labels(kind).inc(result["count"])
    if job.kind == JobKind.train:
        rate = training_rate(job)
        if rate is not None:
            m.samples_per_second.labels(str(job.params.get("family", "unknown"))).set(rate)


def training_rate(job: Job) -> float | None:
    """Samples per second: from the final metrics (GAN, VAE) or the last training step's report (CNN)."""
    for source in ((job.result or {}).get("metrics"), (job.progress or {}).get("metrics")):
        value = (source or {}).get("samples_per_sec")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id is None or task is None or not get_settings().worker_metrics_port:
        return  # metrics off: no reads for them either
    try:
        job = _row(task_id)
    except Exception:  # metrics never stop a job
        log.warning("metrics: reading job %s before its run failed", task_id, exc_info=True)
        return
    hostname = getattr(task.request, "hostname", None) or socket.gethostname()
    _started[task_id] = Started(time.monotonic(), job.attempts if job else 0, f"{hostname}:{os.getpid()}:")


@signals.task_postrun.connect
def _task_finished(task_id: str | None = None, **_: Any) -> None:
    before = _started.pop(task_id or "", None)
    if before is None:
        return
    seconds = time.monotonic() - before.monotonic
    try:
        job = _row(task_id or "")
        if job is not None:
            record_finished(job, outcome_of(job, before), seconds)
    except Exception:
        log.warning("metrics: recording job %s failed", task_id, exc_info=True)


# ---------------------------------------------------------------------------------------------------
# GPU gauges (NVML), read at scrape time in the main process


class GpuCollector:
    """Memory and utilisation of the GPUs this worker sees (CUDA_VISIBLE_DEVICES), through NVML."""

    def __init__(self, pynvml: Any, handles: list[tuple[str, Any]]) -> None:
        self.nvml = pynvml
        self.handles = handles

    @classmethod
    def create(cls) -> GpuCollector | None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no library, no driver or no GPU: nothing to report
            return None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            names = [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        else:
            names = [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        handles = []
        for name in names:
            try:
                if name.isdigit():
                    handle = pynvml.nvmlDeviceGetHandleByIndex(int(name))
                else:
                    handle = pynvml.nvmlDeviceGetHandleByUUID(name)
            except Exception:
                log.warning("metrics: NVML does not know GPU %s", name)
                continue
            handles.append((name, handle))
        return cls(pynvml, handles) if handles else None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        used = GaugeMetricFamily("genq_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
        total = GaugeMetricFamily("genq_gpu_memory_total_bytes", "GPU memory in all", labels=["gpu"])
        busy = GaugeMetricFamily(
            "genq_gpu_utilization_ratio", "Fraction of the last sample period a kernel ran", labels=["gpu"]
        )
        for name, handle in self.handles:
            try:
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
            except Exception:
                continue
            used.add_metric([name], float(memory.used))
            total.add_metric([name], float(memory.total))
            busy.add_metric([name], rates.gpu / 100.0)
        yield from (used, total, busy)


# ---------------------------------------------------------------------------------------------------
# Serving, from the worker's main process


_own_dir: str | None = None


@signals.worker_init.connect
def _serve(**_: Any) -> None:
    """Before the pool process is spawned: the shared directory, then the HTTP server."""
    global _own_dir
    port = get_settings().worker_metrics_port
    if not port:
        return
    if not os.environ.get(MULTIPROC_ENV):
        _own_dir = tempfile.mkdtemp(prefix="genq-worker-metrics-")
        os.environ[MULTIPROC_ENV] = _own_dir
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    gpus = GpuCollector.create()
    if gpus is not None:
        registry.register(gpus)  # type: ignore[arg-type]
    try:
        start_http_server(port, registry=registry)
    except OSError as error:  # a taken port costs the metrics, never the worker
        log.error("metrics: cannot serve on port %d (%s); this worker runs without them", port, error)
        return
    log.info("metrics served on port %d (gpus: %s)", port, [n for n, _ in gpus.handles] if gpus else "none")


@signals.worker_process_shutdown.connect
def _pool_process_gone(pid: int | None = None, **_: Any) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


@signals.worker_shutdown.connect
def _clean_up(**_: Any) -> None:
    if _own_dir is not None:
        shutil.rmtree(_own_dir, ignore_errors=True)
