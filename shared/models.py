"""SQL schema: tenants and keys, jobs and batches, the trained-model registry, datasets and artifacts.

The job row is the source of truth for a job's state; Celery only carries its id.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.specs import Family, JobKind


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC in and out, on Postgres and on SQLite (which stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use UTC-aware datetimes")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceling = "canceling"
    canceled = "canceled"


TERMINAL_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored by value as plain strings: adding a value needs no ALTER TYPE.
    return Enum(
        cls,
        native_enum=False,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime,
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
    }


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Signs webhook deliveries, so stored as given ("whsec_..."), shown once by `genq admin`. After a
    # rotation the previous secret signs too, for a grace period (shared/webhooks.py).
    webhook_secret: Mapped[str | None] = mapped_column(String(100))
    webhook_secret_previous: Mapped[str | None] = mapped_column(String(100))
    webhook_secret_rotated_at: Mapped[dt.datetime | None]
    # Scheduling (shared/scheduling.py): the tenant's weight in the fair share of worker time, and its
    # limits (None: unlimited). `rate_limit` is a Flask-Limiter string ("20/second;600/minute").
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default=text("1.0"))
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer)
    max_running_jobs: Mapped[int | None] = mapped_column(Integer)
    gpu_seconds_per_day: Mapped[float | None] = mapped_column(Float)
    rate_limit: Mapped[str | None] = mapped_column(String(100))
    # Recent worker time, decayed with the fair-share half-life as of `share_at` (updated per finished job).
    share_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    share_at: Mapped[dt.datetime | None]
    # The last job sequence number given out: a job's `seq` orders it among the tenant's own work.
    last_job_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # sha256 of the secret: the key itself is shown once, at creation, and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="")
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]

    tenant: Mapped[Tenant] = relationship()


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    total: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    canceled_at: Mapped[dt.datetime | None]
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_events: Mapped[str | None] = mapped_column(String(64))  # comma-separated: "started,completed"

    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key", name="uq_batches_tenant_idempotency"),)


# A queued job is either held in SQL (no message yet) or dispatched (its message is in the broker). The
# same text in the indexes' WHERE and in the queries lets both databases use the partial indexes.
HELD = text("status = 'queued' AND published_at IS NULL")
DISPATCHED = text("status = 'queued' AND published_at IS NOT NULL")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)  # = Celery task id
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind))
    params: Mapped[dict[str, Any]]
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.queued)
    queue: Mapped[str] = mapped_column(String(64))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # {phase, step, total, percent, eta_seconds, metrics}; written at most a few times a second.
    progress: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]  # metrics and references (model_id) when succeeded
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[dt.datetime | None]
    checkpoint_key: Mapped[str | None] = mapped_column(String(1024))  # training: resume point
    # When `genq admin gc` deleted the finished job's unreferenced objects; None: not yet.
    outputs_swept_at: Mapped[dt.datetime | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # When its message was sent (the scheduler dispatched it): a queued job without one is held in SQL.
    published_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_events: Mapped[str | None] = mapped_column(String(64))  # comma-separated: "started,completed"
    # Its place among its tenant's queued jobs: higher priority first, then submission order
    # (shared/scheduling.py: order_key). The scheduler dispatches each tenant's held jobs in this order.
    order_key: Mapped[int | None] = mapped_column(BigInteger)
    # The X-Request-ID of the submission: its message carries it, so the worker's log lines do too.
    request_id: Mapped[str | None] = mapped_column(String(128))

    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="job", order_by="Artifact.name", cascade="all, delete-orphan"
    )

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        # The scheduler's reads: held jobs per tenant in dispatch order, and the messages out (the window).
        Index("ix_jobs_held", "queue", "tenant_id", "order_key", postgresql_where=HELD, sqlite_where=HELD),
        Index(
            "ix_jobs_dispatched", "queue", "tenant_id", postgresql_where=DISPATCHED, sqlite_where=DISPATCHED
        ),
        Index("ix_jobs_tenant_status", "tenant_id", "status"),
        Index("ix_jobs_kind_finished", "kind", "finished_at"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_batch_status", "batch_id", "status"),
        # The webhook dispatcher looks for recently finished jobs whose completed event is missing.
        Index(
            "ix_jobs_webhook_finished",
            "finished_at",
            postgresql_where=text("webhook_url IS NOT NULL"),
            sqlite_where=text("webhook_url IS NOT NULL"),
        ),
        Index("ix_jobs_gc", "outputs_swept_at", "finished_at"),
    )


class TrainedModel(Base):
    __tablename__ = "models"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    family: Mapped[Family] = mapped_column(_enum(Family))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    training_job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    dataset: Mapped[str] = mapped_column(String(200))
    image_size: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    num_classes: Mapped[int] = mapped_column(Integer, default=0)
    class_names: Mapped[list[Any]] = mapped_column(default=list)
    checkpoint_key: Mapped[str] = mapped_column(String(1024))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    # Set when a job or `genq admin gc` found the checkpoint gone or damaged: the model's view says so.
    checkpoint_missing_at: Mapped[dt.datetime | None]
    sample_grid_key: Mapped[str | None] = mapped_column(String(1024))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("tenant_id", "name", "version", name="uq_models_tenant_name_version"),
        Index("ix_models_tenant_created", "tenant_id", "created_at"),
    )


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(16))  # "zip" | "npz"
    object_key: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    num_images: Mapped[int] = mapped_column(Integer)
    image_size: Mapped[int] = mapped_column(Integer)  # largest side of the source images
    channels: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class TenantUsage(Base):
    """Worker time a tenant used per UTC day: the daily GPU-seconds quota and `GET /v1/usage` read it."""

    __tablename__ = "tenant_usage"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    worker_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    jobs: Mapped[int] = mapped_column(Integer, default=0)


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))  # "grid.png", "manifest.json", "shards/00000.tar"
    key: Mapped[str] = mapped_column(String(1024))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="artifacts")

    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)


class WebhookDelivery(Base):
    """One event for one webhook URL: its id is the `webhook-id` header, the same on every attempt.

    Written in the transaction that changes the job (an outbox row). `next_attempt_at` is when the next
    attempt may start and, while one runs, until when that attempt holds the delivery."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), index=True
    )
    subject_id: Mapped[uuid.UUID] = mapped_column(Uuid)  # the job or batch the event is about
    # "started" / "completed" (once per subject) or "progress@<unix second>" (batches: once a second)
    dedup: Mapped[str | None] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(32))  # "job.completed", "batch.started", ...
    url: Mapped[str] = mapped_column(String(2048))
    body: Mapped[str] = mapped_column(Text)  # the exact JSON that is signed and sent
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None]
    published_at: Mapped[dt.datetime | None]
    retry_from: Mapped[dt.datetime] = mapped_column(default=utcnow)  # creation, or the last resend
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[dt.datetime | None]

    __table_args__ = (
        UniqueConstraint("subject_id", "dedup", name="uq_webhook_deliveries_subject_dedup"),
        Index("ix_webhook_deliveries_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: what the receiver answered, or why there was no answer."""

    __tablename__ = "webhook_attempts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(String(500))
