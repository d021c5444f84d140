"""Response shapes, for the OpenAPI document. The views in api/views.py build plain dicts with exactly
these keys (a test checks that they agree); requests are validated by the specs in shared/specs.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    field: str = Field(description="dotted path of the offending field, parameter or header")
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable, e.g. invalid_request, not_found, idempotency_conflict")
    message: str = Field(description="names the first offending field")
    details: list[ErrorDetail]


class ErrorResponse(BaseModel):
    error: ErrorBody


class Progress(BaseModel):
    phase: str | None
    step: float | None
    total: float | None
    percent: float | None = Field(description="0-100")
    eta_seconds: float | None = Field(description="estimated from the rate so far")
    metrics: dict[str, Any]


class JobError(BaseModel):
    code: str
    message: str


class ArtifactView(BaseModel):
    name: str = Field(description='"grid.png", "manifest.json", "shards/00000.tar", ...')
    content_type: str
    size: int
    sha256: str
    url: str = Field(description="download URL minted at read time; expires")


class JobSummary(BaseModel):
    id: str
    kind: str
    status: str = Field(description="queued, running, succeeded, failed, canceling or canceled")
    priority: int
    queue: str
    progress: Progress | None
    attempts: int
    error: JobError | None
    batch_id: str | None
    model_id: str | None = Field(description="train: the model it made; others: the model they use")
    created_at: str
    updated_at: str
    published_at: str | None
    started_at: str | None
    finished_at: str | None


class JobView(JobSummary):
    params: dict[str, Any] = Field(description="the validated params, defaults filled in")
    queue_position: int | None = Field(
        description="queued: jobs expected to start before this one (fair-share order; see README)"
    )
    queue_eta_seconds: float | None = Field(
        description="queued: estimated seconds until it starts, from recent jobs of its kind"
    )
    waiting_for: Literal["worker", "max_running_jobs", "gpu_seconds_per_day"] | None = Field(
        description="queued: a free worker, or the tenant's own quota that holds it back"
    )
    result: dict[str, Any] | None
    metrics: dict[str, Any]
    artifacts: list[ArtifactView]


class JobList(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last")


class BatchView(BaseModel):
    id: str
    total: int
    counts: dict[str, int] = Field(description="jobs per status")
    finished: int
    done: bool
    canceled: bool
    canceled_at: str | None
    created_at: str


class BatchCreated(BatchView):
    job_ids: list[str] = Field(description="in item order")


class ModelView(BaseModel):
    id: str
    family: str
    name: str
    version: int
    dataset: str
    image_size: int
    channels: int
    num_classes: int
    class_names: list[Any]
    metrics: dict[str, Any]
    config: dict[str, Any]
    training_job_id: str | None
    checkpoint_sha256: str
    checkpoint: Literal["available", "missing"] = Field(
        description="missing: the checkpoint is gone from storage or damaged; sampling jobs on this model "
        "fail with checkpoint_missing until it is trained again"
    )
    checkpoint_url: str
    sample_grid_url: str | None
    created_at: str


class ModelList(BaseModel):
    models: list[ModelView]
    next_cursor: str | None


class DatasetView(BaseModel):
    id: str
    name: str
    format: str
    size_bytes: int
    sha256: str
    num_images: int
    image_size: int = Field(description="largest side of the source images")
    channels: int
    class_names: list[Any]
    created_at: str


class DatasetList(BaseModel):
    datasets: list[DatasetView]
    next_cursor: str | None


class DatasetUpload(BaseModel):
    """multipart/form-data body of POST /v1/datasets."""

    file: bytes = Field(description="a .zip of PNG/JPEG images (one folder per class for labels) or an .npz")
    name: str | None = Field(None, max_length=200, description="default: the file's name")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str] = Field(description="database, broker, storage: ok, unavailable or timeout")
    failed: list[str]


class WebhookAttemptView(BaseModel):
    number: int
    started_at: str
    status_code: int | None = Field(description="null: no answer (refused, timeout, connection error)")
    latency_ms: float
    error: str | None


class WebhookDeliveryView(BaseModel):
    id: str = Field(description="the webhook-id header: the same on every attempt and resend")
    event: str = Field(description="job.started, job.progress, job.completed, batch.started, ...")
    job_id: str | None
    batch_id: str | None
    url: str
    status: str = Field(description="pending (retries scheduled), succeeded or failed (retries ran out)")
    next_attempt_at: str | None
    created_at: str
    delivered_at: str | None
    last_status_code: int | None
    last_error: str | None
    attempts: list[WebhookAttemptView] = Field(description="oldest first")


class WebhookDeliveryList(BaseModel):
    deliveries: list[WebhookDeliveryView]
    next_cursor: str | None


class Limits(BaseModel):
    weight: float = Field(description="share of worker time relative to other tenants (default 1)")
    max_queued_jobs: int | None = Field(description="submits past this get 429; null: no limit")
    max_running_jobs: int | None = Field(description="jobs running (or sent to a worker) at once")
    gpu_seconds_per_day: float | None = Field(description="worker seconds per UTC day; then jobs wait")
    rate_limit: str | None = Field(description="requests per API key, e.g. 20/second; null: the default")


class UsageView(BaseModel):
    tenant_id: str
    queued: int
    running: int
    gpu_seconds_today: float = Field(description="worker seconds of attempts that ended today (UTC)")
    day_resets_in_seconds: int
    limits: Limits
    waiting_for: Literal["max_running_jobs", "gpu_seconds_per_day"] | None = Field(
        description="the quota now holding your queued jobs back, if any"
    )
