"""Prometheus metrics for operators: the API's HTTP traffic, and the queue as SQL sees it.

- HTTP: requests by method, route template (`/v1/jobs/<job_id>`, never the id itself) and status, and a
  latency histogram by route. Under gunicorn set `PROMETHEUS_MULTIPROC_DIR` (an empty directory, the same
  for every worker process of one server): each process writes its own samples there and a scrape,
  answered by any process, adds them up (prometheus_client's multiprocess mode).
- SQL: jobs per queue and status, queued jobs per queue (`genq_jobs_queued`: the autoscaling signal, see
  deploy/keda-scaledobject.yaml), the oldest queued job's age per queue and queued jobs per tenant. Read
  at scrape time, at most once per `metrics_sql_cache_seconds` per process, with three GROUP BY queries
  served by the job indexes.

Served at GET /metrics to `Authorization: Bearer <GENQ_METRICS_TOKEN>` only: queue depths and tenant names
are operator information, so a tenant's API key is refused, and without a token /metrics does not exist.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.context import api
from api.errors import ApiError
from api.openapi import TEXT, operation
from shared.models import Job, JobStatus, Tenant, utcnow
from shared.settings import Settings

log = logging.getLogger("genq.api")
bp = Blueprint("metrics", __name__)
EXTENSION = "genq.metrics"  # app.extensions key of the SQL gauges' registry

UNMATCHED_ROUTE = "<unmatched>"  # 404s for arbitrary paths share one label value
HTTP_REQUESTS = Counter(
    "genq_http_requests_total", "HTTP requests answered, by route template and status",
    ["method", "route", "status"],
)  # fmt: skip
HTTP_LATENCY = Histogram(
    "genq_http_request_duration_seconds", "Time to answer an HTTP request, by route template",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)  # fmt: skip


@dataclass
class QueueSnapshot:
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)  # (queue, status) -> count
    oldest_queued: dict[str, dt.datetime] = field(default_factory=dict)  # queue -> created_at
    tenant_queued: dict[tuple[str, str], int] = field(default_factory=dict)  # (tenant id, name) -> count


def read_queue_snapshot(session: Session) -> QueueSnapshot:
    snapshot = QueueSnapshot()
    for queue, status, count in session.execute(
        select(Job.queue, Job.status, func.count()).group_by(Job.queue, Job.status)
    ):
        snapshot.jobs[(queue, status.value)] = count
    queued = Job.status == JobStatus.queued
    for queue, oldest in session.execute(
        select(Job.queue, func.min(Job.created_at)).where(queued).group_by(Job.queue)
    ):
        snapshot.oldest_queued[queue] = oldest
    tenants = (
        select(Job.tenant_id, Tenant.name, func.count())
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(queued)
        .group_by(Job.tenant_id, Tenant.name)
    )
    for tenant_id, name, count in session.execute(tenants):
        snapshot.tenant_queued[(str(tenant_id), name)] = count
    return snapshot


class QueueCollector(Collector):
    """The SQL-derived gauges, cached: many scrapers (Prometheus HA pairs, KEDA) cost one read per period."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.queues = (settings.train_queue, settings.sample_queue)
        self.ttl = settings.metrics_sql_cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, QueueSnapshot | None, dt.datetime] | None = None

    def _snapshot(self) -> tuple[QueueSnapshot | None, dt.datetime]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.ttl:
                snapshot: QueueSnapshot | None
                try:
                    with self.sessions() as session:
                        snapshot = read_queue_snapshot(session)
                except Exception as exc:  # the scrape still answers, saying SQL is unreachable
                    log.warning("metrics: reading the queue state failed: %s", exc)
                    snapshot = None
                self._cached = (now, snapshot, utcnow())
            return self._cached[1], self._cached[2]

    def collect(self) -> Iterator[Metric]:
        snapshot, read_at = self._snapshot()
        up = GaugeMetricFamily("genq_metrics_sql_up", "1 when the last read of the queue state succeeded")
        up.add_metric([], 1.0 if snapshot is not None else 0.0)
        yield up
        if snapshot is None:
            return
        queues = sorted({*self.queues, *(q for q, _ in snapshot.jobs)})
        jobs = GaugeMetricFamily("genq_jobs", "Jobs per queue and status", labels=["queue", "status"])
        queued = GaugeMetricFamily(
            "genq_jobs_queued", "Jobs waiting per queue: the autoscaling signal", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "genq_oldest_queued_job_age_seconds", "Age of the oldest queued job per queue (0: none)",
            labels=["queue"],
        )  # fmt: skip
        for queue in queues:
            for status in JobStatus:
                jobs.add_metric([queue, status.value], snapshot.jobs.get((queue, status.value), 0))
            queued.add_metric([queue], snapshot.jobs.get((queue, JobStatus.queued.value), 0))
            created = snapshot.oldest_queued.get(queue)
            oldest.add_metric([queue], max(0.0, (read_at - created).total_seconds()) if created else 0.0)
        tenants = GaugeMetricFamily(
            "genq_tenant_jobs_queued", "Queued jobs per tenant (tenants with none are left out)",
            labels=["tenant_id", "tenant"],
        )  # fmt: skip
        for (tenant_id, name), count in sorted(snapshot.tenant_queued.items()):
            tenants.add_metric([tenant_id, name], count)
        yield from (jobs, queued, oldest, tenants)


def _process_metrics() -> bytes:
    """This server's HTTP metrics: every gunicorn process's, when they share a multiprocess directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def _check_operator_token(settings: Settings) -> None:
    if settings.metrics_token is None:
        raise ApiError(404, "not_found", "metrics are off: set GENQ_METRICS_TOKEN to serve /metrics")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "unauthorized", "send the operator token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="genq-metrics"'},
        )  # fmt: skip
    if not hmac.compare_digest(token.strip().encode(), settings.metrics_token.encode()):
        message = "/metrics needs the operator token (GENQ_METRICS_TOKEN), not an API key"
        raise ApiError(403, "forbidden", message)


@bp.get("/metrics")
@operation({200: None}, (401, 403, 404), content=TEXT)
def metrics() -> Response:
    """Prometheus metrics: send the operator token (GENQ_METRICS_TOKEN), not an API key."""
    _check_operator_token(api().settings)
    body = _process_metrics() + generate_latest(current_app.extensions[EXTENSION])
    return Response(body, content_type=CONTENT_TYPE_LATEST)


def install_metrics(app: Flask) -> None:
    """Time every request and count its answer by route template; serve /metrics (after `install`)."""
    ctx = app.extensions["genq"]
    queue_registry = CollectorRegistry(auto_describe=False)
    queue_registry.register(QueueCollector(ctx.sessions, ctx.settings))
    app.extensions[EXTENSION] = queue_registry

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        if started is not None:
            HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        return response

    app.register_blueprint(bp)
