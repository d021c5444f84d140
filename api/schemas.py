"""The models each route declares (api/openapi.py): its query parameters and headers, read with these
models before the view runs, and its responses, which the views build as plain dicts with exactly these
keys (tests/unit/api/test_response_models.py checks real answers against them). Bodies follow the specs
in shared/specs.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.long_poll import MAX_WAIT_SECONDS
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from api.validation import IdempotencyKey, Uuid, choices, integer, text
from shared.models import JobStatus
from shared.specs import Family, JobKind

Limit = integer(1, MAX_LIMIT)
CURSOR = Field(None, description="next_cursor of the previous page")
DELIVERY_STATUSES = ["pending", "succeeded", "failed"]


def _absent_by_default(schema: dict[str, Any]) -> None:
    for prop in schema.get("properties", {}).values():
        if prop.get("default", "") is None:
            del prop["default"]


class Parameters(BaseModel):
    """Query parameters or headers: all optional; an absent one is None, not a value to send."""

    model_config = ConfigDict(json_schema_extra=_absent_by_default)


class JobQuery(Parameters):
    status: choices([s.value for s in JobStatus]) = None  # type: ignore[valid-type]
    kind: choices([k.value for k in JobKind]) = None  # type: ignore[valid-type]
    batch: Uuid = None
    limit: Limit = DEFAULT_LIMIT
    cursor: str = CURSOR


class ModelQuery(Parameters):
    family: choices([f.value for f in Family]) = None  # type: ignore[valid-type]
    name: text(200) = None  # type: ignore[valid-type]
    limit: Limit = DEFAULT_LIMIT
    cursor: str = CURSOR


class DeliveryQuery(Parameters):
    status: choices(DELIVERY_STATUSES) = None  # type: ignore[valid-type]
    job: Uuid = None
    batch: Uuid = None
    limit: Limit = DEFAULT_LIMIT
    cursor: str = CURSOR


class PageQuery(Parameters):
    limit: Limit = DEFAULT_LIMIT
    cursor: str = CURSOR


class WaitQuery(Parameters):
    wait: integer(0, MAX_WAIT_SECONDS, "answer at the next change, or after this many seconds") = 0  # type: ignore[valid-type]


class ConditionalHeaders(Parameters):
    if_none_match: str = Field(
        None,
        alias="If-None-Match",
        description="the ETag of the copy you hold: 304 while it is current; with wait, waits while it is "
        "current",
    )


class IdempotencyHeaders(Parameters):
    idempotency_key: IdempotencyKey = Field(
        None, alias="Idempotency-Key", description="repeat a request safely: same key and body"
    )


class SignedQuery(Parameters):
    """Checked by the signature, not by type: a bad one is a 403."""

    expires: str = Field(None, description="unix time the URL expires")
    signature: str = None
    filename: str = Field(None, description="download name")


class View(BaseModel):
    """A response: exactly these keys."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(View):
    field: str = Field(description="dotted path of the offending field, parameter or header")
    message: str


class ErrorBody(View):
    code: str = Field(description="machine-readable, e.g. invalid_request, not_found, idempotency_conflict")
    message: str = Field(description="names the first offending field")
    details: list[ErrorDetail]


class ErrorResponse(View):
    error: ErrorBody


class Progress(View):
    phase: str | None
    step: float | None
    total: float | None
    percent: float | None = Field(description="0-100")
    eta_seconds: float | None = Field(description="estimated from the rate so far")
    metrics: dict[str, Any]


class JobError(View):
    code: str
    message: str


class ArtifactView(View):
    name: str = Field(description='"grid.png", "manifest.json", "shards/00000.tar", ...')
    content_type: str
    size: int
    sha256: str
    url: str = Field(description="download URL minted at read time; expires")


class JobSummary(View):
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


class JobList(View):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last")


class BatchView(View):
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


class ModelView(View):
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


class ModelList(View):
    models: list[ModelView]
    next_cursor: str | None


class DatasetView(View):
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


class DatasetList(View):
    datasets: list[DatasetView]
    next_cursor: str | None


class DatasetUpload(BaseModel):
    """multipart/form-data body of POST /v1/datasets."""

    file: bytes = Field(description="a .zip of PNG/JPEG images (one folder per class for labels) or an .npz")
    name: str | None = Field(None, max_length=200, description="default: the file's name")


class Health(View):
    status: str


class Readiness(View):
    status: str
    checks: dict[str, str] = Field(description="database, broker, storage: ok, unavailable or timeout")
    failed: list[str]


class WebhookAttemptView(View):
    number: int
    started_at: str
    status_code: int | None = Field(description="null: no answer (refused, timeout, connection error)")
    latency_ms: float
    error: str | None


class WebhookDeliveryView(View):
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


class WebhookDeliveryList(View):
    deliveries: list[WebhookDeliveryView]
    next_cursor: str | None


class Limits(View):
    weight: float = Field(description="share of worker time relative to other tenants (default 1)")
    max_queued_jobs: int | None = Field(description="submits past this get 429; null: no limit")
    max_running_jobs: int | None = Field(description="jobs running (or sent to a worker) at once")
    gpu_seconds_per_day: float | None = Field(description="worker seconds per UTC day; then jobs wait")
    rate_limit: str | None = Field(description="requests per API key, e.g. 20/second; null: the default")


class UsageView(View):
    tenant_id: str
    queued: int
    running: int
    gpu_seconds_today: float = Field(description="worker seconds of attempts that ended today (UTC)")
    day_resets_in_seconds: int
    limits: Limits
    waiting_for: Literal["max_running_jobs", "gpu_seconds_per_day"] | None = Field(
        description="the quota now holding your queued jobs back, if any"
    )
