"""One typed settings object, read from the environment (prefix GENQ_) once, failing fast on bad values.

Defaults are the embedded mode: SQLite and a local object store under `data_dir`, and a broker on
localhost (which `genq up` starts). Production sets `GENQ_ENVIRONMENT=production`, and then every
secret must be given explicitly.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "genq-development-secret-do-not-use-in-production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENQ_", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".genq")

    # SQL: the job rows are the source of truth. Default: SQLite file under data_dir.
    database_url: str | None = None

    # Celery transport. Queues: training and sampling (generate/edit/evaluate) are separate so GPU pools
    # can be dedicated to either.
    broker_url: str = "redis://127.0.0.1:6379/0"
    train_queue: str = "genq.train"
    sample_queue: str = "genq.sample"

    # Object storage: "s3" (AWS, MinIO, moto) or "local" (a directory; the API serves signed downloads).
    storage_backend: Literal["s3", "local"] = "local"
    s3_endpoint_url: str | None = None
    s3_bucket: str = "genq"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_public_endpoint_url: str | None = Field(
        None, description="endpoint used in presigned URLs when clients reach storage by another address"
    )
    # Every S3 call is bounded: connect and read timeouts, and botocore's retries with backoff
    # ("standard" or "adaptive" mode, max_attempts tries in all); what still fails is StorageUnavailable
    # and the job goes back to the queue.
    s3_connect_timeout_seconds: float = Field(5.0, gt=0, le=300)
    s3_read_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    s3_max_attempts: int = Field(4, ge=1, le=20)
    s3_retry_mode: Literal["standard", "adaptive"] = "standard"
    # `genq admin gc` deletes a finished job's unreferenced objects (failed and canceled jobs' outputs,
    # checkpoints, stale attempts' uploads) this long after it finished: by then a stale attempt has
    # noticed its lost lease and stopped uploading.
    gc_grace_seconds: int = Field(900, ge=0)
    local_storage_dir: Path | None = None
    public_base_url: str = "http://127.0.0.1:8000"  # where the API is reached, for local download URLs
    download_url_ttl_seconds: int = Field(3600, ge=10, le=7 * 86400)
    signing_secret: str = DEV_SECRET
    # A revoked API key keeps working in an API process for at most this long (0: look keys up every time).
    api_key_cache_seconds: float = Field(5.0, ge=0, le=300)

    # Leases: a worker holds a job for lease_seconds and renews it every heartbeat_seconds. The sweeper
    # requeues expired leases (attempts + 1, up to max_attempts) and republishes lost queued jobs.
    lease_seconds: int = Field(60, ge=2)
    heartbeat_seconds: int = Field(10, ge=1)
    sweep_interval_seconds: int = Field(15, ge=1)
    requeue_after_seconds: int = Field(300, ge=1, description="republish a queued job older than this")
    max_attempts: int = Field(3, ge=1, le=100)
    # A job interrupted by an unreachable database or object store is held (lease renewed) until that
    # dependency answers again, at most this long, then requeued: an outage does not use up its attempts.
    recovery_wait_seconds: float = Field(120.0, ge=0)
    progress_interval_seconds: float = Field(0.5, gt=0)
    # A queued job whose message left this long ago and is neither waiting in the broker nor held by a
    # worker lost its message (a flushed broker): the sweeper publishes it again.
    publish_grace_seconds: int = Field(10, ge=1)
    # How often a worker pings its database; it stops consuming while the pings fail.
    database_check_seconds: float = Field(2.0, gt=0)

    # Scheduling (worker/scheduler.py): queued jobs wait in SQL; one scheduler (a Redis lock held for
    # scheduler_lease_seconds, renewed) sends each queue only as many messages as its live workers can
    # start now, plus dispatch_ahead_per_worker each (more keeps workers busier between jobs; fewer lets a
    # newcomer's job overtake a waiting backlog sooner). It is woken on every submit and finish, and
    # also runs every scheduler_tick_seconds. Tenants share worker time by weight; past usage decays with
    # fair_share_half_life_seconds.
    scheduler_lease_seconds: float = Field(10.0, gt=0)
    scheduler_tick_seconds: float = Field(1.0, gt=0)
    dispatch_ahead_per_worker: int = Field(0, ge=0, le=100)
    fair_share_half_life_seconds: float = Field(3600.0, gt=0)
    # HTTP request limits per API key (Flask-Limiter syntax); a tenant's own `rate_limit` replaces it.
    # Counted in the broker's Redis unless rate_limit_storage_url says otherwise ("memory://": per process).
    rate_limit: str = "50/second;1500/minute"
    rate_limit_storage_url: str | None = None

    # Webhooks: deliveries run on their own queue (a light worker, `python -m worker.webhooks`), retried
    # with exponential backoff (base, doubling, capped at max_interval) for retry_window seconds.
    # Targets must be https and resolve to public addresses unless these allow more (embedded mode does).
    webhook_queue: str = "genq.webhooks"
    webhook_allow_http: bool = False
    webhook_allow_private: bool = Field(False, description="allow loopback/private/link-local targets")
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=120, description="per attempt, connect and read")
    webhook_retry_base_seconds: float = Field(5.0, gt=0)
    webhook_retry_max_interval_seconds: float = Field(3600.0, gt=0)
    webhook_retry_window_seconds: float = Field(24 * 3600.0, ge=0)
    webhook_poll_seconds: float = Field(1.0, gt=0, description="how often due retries are dispatched")

    # Uploads
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024)

    # Engine
    fashion_mnist_dir: Path = Path("/usr/share/datasets/fashion-mnist")
    torch_threads: int = Field(0, ge=0, description="0: all cores of this worker")
    device: str | None = None  # "cuda", "cuda:1", "cpu"; None: CUDA when present
    # bf16 autocast in training where the device computes bf16 natively (recent GPUs, AVX512-BF16/AMX CPUs)
    mixed_precision: bool = True

    # Observability. Logs: JSON lines carrying job_id, tenant_id, attempt, request_id ("text" for a
    # terminal). Metrics are for operators: the API serves /metrics only to `Bearer <metrics_token>`
    # (unset: no /metrics); each worker serves its own on worker_metrics_port (0: off).
    log_format: Literal["json", "text"] = "json"
    metrics_token: str | None = Field(None, min_length=16)
    metrics_sql_cache_seconds: float = Field(5.0, ge=0, description="SQL-derived gauges are this fresh")
    worker_metrics_port: int = Field(0, ge=0, le=65535)

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return value or None  # GENQ_METRICS_TOKEN= (compose's default) means no token

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("heartbeat_seconds must be shorter than lease_seconds")
        if self.environment == "production":
            missing = []
            if self.signing_secret == DEV_SECRET:
                missing.append("GENQ_SIGNING_SECRET")
            if not self.database_url:
                missing.append("GENQ_DATABASE_URL")
            if missing:
                raise ValueError(f"production needs explicit {', '.join(missing)}")
        return self

    @property
    def sql_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'genq.db').resolve()}"

    @property
    def storage_dir(self) -> Path:
        return (self.local_storage_dir or self.data_dir / "objects").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
