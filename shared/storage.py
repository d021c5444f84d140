"""Object storage behind one small interface: S3 (boto3: AWS, MinIO, moto) or a local directory.

Keys live under the tenant and job. A job attempt's outputs go under its own prefix,
`tenants/<tenant>/jobs/<job>/attempts/<n>/<name>`, so a stale attempt can never overwrite the winner's
objects; they become the job's when the fenced finish records them as artifact rows (key and sha256).
Downloads are URLs minted at read time: S3 presigned URLs, or for the local store an HMAC-signed,
expiring link served by the API.

Failures are translated into three errors: `ObjectNotFound` (the key is absent), `StorageUnavailable`
(the backend could not be reached, timed out or answered 5xx after botocore's bounded retries, or the
local directory cannot be written: transient, the job is requeued) and `StorageError` for the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import shutil
import time
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote, urlencode

import boto3
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from shared.settings import Settings

# S3 error codes that mean "try again later" whatever their HTTP status.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalError",
        "Throttling",
        "RequestLimitExceeded",
    }
)
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
DELETE_BATCH = 1000  # S3 DeleteObjects takes at most 1000 keys
PROBE_TIMEOUT_SECONDS = 1.0
# Connection refused/reset, connect and read timeouts, a body cut off mid-stream, retries exhausted.
TRANSIENT_ERRORS = (
    BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ChecksumError,
    RetriesExceededError,
    OSError,
)


class StorageError(RuntimeError):
    """A storage backend failed; the message says what and where."""


class ObjectNotFound(StorageError):
    pass


class StorageUnavailable(StorageError):
    """The backend could not be reached or kept failing after bounded retries: a transient fault, so
    the job that hit it goes back to the queue instead of failing for good."""


class ObjectStore(Protocol):
    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...
    def put_file(self, key: str, path: Path, content_type: str) -> None: ...
    def put_stream(self, key: str, stream: BinaryIO, content_type: str) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def download_file(self, key: str, path: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_many(self, keys: Iterable[str]) -> None: ...
    def list_keys(self, prefix: str) -> Iterator[str]: ...
    def download_url(self, key: str, filename: str | None = None) -> str: ...
    def check(self) -> None: ...


def job_prefix(tenant_id: object, job_id: object) -> str:
    return f"tenants/{tenant_id}/jobs/{job_id}/"


def job_key(tenant_id: object, job_id: object, name: str) -> str:
    return f"{job_prefix(tenant_id, job_id)}{name}"


def attempt_key(tenant_id: object, job_id: object, attempt: int, name: str) -> str:
    """Where attempt `attempt` of a job writes `name`: no other attempt writes under this prefix."""
    return job_key(tenant_id, job_id, f"attempts/{attempt}/{name}")


def dataset_key(tenant_id: object, dataset_id: object, filename: str) -> str:
    return f"tenants/{tenant_id}/datasets/{dataset_id}/{filename}"


def safe_filename(filename: str | None, fallback: str) -> str:
    """A download name fit for a Content-Disposition header: control characters (CR, LF, NUL, ...),
    quotes, backslashes and path separators replaced, length bounded; `fallback` when nothing is left."""
    if not filename:
        return fallback
    cleaned = "".join(
        "_" if unicodedata.category(c).startswith("C") or c in '"\\/' else c for c in filename
    ).strip(" .")
    return cleaned[:200] or fallback


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid object key {key!r}")
    return key


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or error.get("Code") in TRANSIENT_CODES
    return isinstance(exc, TRANSIENT_ERRORS)


class S3Store:
    """S3 with bounded calls: connect and read timeouts, and botocore's retry mode (exponential backoff
    with jitter, `max_attempts` tries in all) from settings; what still fails is StorageUnavailable."""

    def __init__(
        self,
        settings: Settings,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> None:
        self.bucket = settings.s3_bucket
        self.ttl = settings.download_url_ttl_seconds
        config = BotoConfig(
            signature_version="s3v4",
            connect_timeout=connect_timeout or settings.s3_connect_timeout_seconds,
            read_timeout=read_timeout or settings.s3_read_timeout_seconds,
            retries={
                "mode": settings.s3_retry_mode,
                "total_max_attempts": max_attempts or settings.s3_max_attempts,  # tries in all
            },
        )
        common: dict[str, Any] = dict(
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=config,
        )
        self.client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, **common)
        # Presigned URLs must name the address clients use (compose: localhost:9000, not minio:9000).
        public = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        self.signer = boto3.client("s3", endpoint_url=public, **common)

    def _call(self, what: str, key: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, **kwargs)
        except S3UploadFailedError as exc:
            # boto3 wraps the ClientError of an upload in a plain exception; classify what it wrapped.
            cause = exc.__cause__ or exc.__context__
            if cause is not None and not _is_transient(cause):
                raise StorageError(f"{what} {self.bucket}/{key} failed: {exc}") from exc
            raise StorageUnavailable(f"{what} {self.bucket}/{key} failed: {exc}") from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in NOT_FOUND_CODES:
                raise ObjectNotFound(f"{key}: no such object") from exc
            error = StorageUnavailable if _is_transient(exc) else StorageError
            raise error(f"{what} {self.bucket}/{key} failed: {code or exc}") from exc
        except (BotoCoreError, RetriesExceededError, OSError) as exc:
            error = StorageUnavailable if _is_transient(exc) else StorageError
            raise error(f"{what} {self.bucket}/{key} failed: {exc}") from exc

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._call("create bucket", "", self.client.create_bucket, Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._call(
            "put",
            key,
            self.client.put_object,
            Bucket=self.bucket,
            Key=_safe_key(key),
            Body=data,
            ContentType=content_type,
        )

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        self._call(
            "upload",
            key,
            self.client.upload_file,
            str(path),
            self.bucket,
            _safe_key(key),
            ExtraArgs={"ContentType": content_type},
        )

    def put_stream(self, key: str, stream: BinaryIO, content_type: str) -> None:
        self._call(
            "upload",
            key,
            self.client.upload_fileobj,
            stream,
            self.bucket,
            _safe_key(key),
            ExtraArgs={"ContentType": content_type},
        )

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            # The body is read inside the classified call: a stream cut off mid-read is transient too.
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

        return self._call("get", key, get)

    def download_file(self, key: str, path: Path) -> None:
        self._call("download", key, self.client.download_file, self.bucket, key, str(path))

    def exists(self, key: str) -> bool:
        try:
            self._call("head", key, self.client.head_object, Bucket=self.bucket, Key=key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=key)

    def delete_many(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        for start in range(0, len(batch), DELETE_BATCH):
            chunk = batch[start : start + DELETE_BATCH]
            response = self._call(
                "delete",
                chunk[0],
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"delete {len(errors)} of {len(chunk)} objects failed, e.g. {first.get('Key')}: "
                    f"{first.get('Code')}"
                )

    def list_keys(self, prefix: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        iterator = iter(pages)
        while True:
            page = self._call("list", prefix, next, iterator, None)
            if page is None:
                return
            for item in page.get("Contents", []):
                yield item["Key"]

    def download_url(self, key: str, filename: str | None = None) -> str:
        params = {"Bucket": self.bucket, "Key": key}
        if filename:
            name = safe_filename(filename, key.rsplit("/", 1)[-1])
            params["ResponseContentDisposition"] = f'attachment; filename="{name}"'
        return self.signer.generate_presigned_url("get_object", Params=params, ExpiresIn=self.ttl)

    def check(self) -> None:
        self._call("head bucket", "", self.client.head_bucket, Bucket=self.bucket)


class LocalStore:
    """A directory standing in for a bucket (embedded mode). Writes are atomic (temp file + rename)."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.storage_dir
        # An unwritable directory is reported by check() and by each write, not at startup.
        with contextlib.suppress(OSError):
            self.root.mkdir(parents=True, exist_ok=True)
        self.secret = settings.signing_secret.encode()
        self.base_url = settings.public_base_url.rstrip("/")
        self.ttl = settings.download_url_ttl_seconds

    def path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def _write(self, key: str, write) -> None:  # type: ignore[no-untyped-def]
        target = self.path(key)
        temp = target.with_name(f".{target.name}.{time.monotonic_ns()}.part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write(temp)
            temp.replace(target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise StorageUnavailable(f"write {key} failed: {exc.strerror or exc}") from exc

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._write(key, lambda temp: temp.write_bytes(data))

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        self._write(key, lambda temp: shutil.copyfile(path, temp))

    def put_stream(self, key: str, stream: BinaryIO, content_type: str) -> None:
        def write(temp: Path) -> None:
            with temp.open("wb") as out:
                shutil.copyfileobj(stream, out, 1024 * 1024)

        self._write(key, write)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"{key}: no such object") from exc
        except OSError as exc:
            raise StorageUnavailable(f"read {key} failed: {exc.strerror or exc}") from exc

    def download_file(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self.path(key), path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"{key}: no such object") from exc
        except OSError as exc:
            raise StorageUnavailable(f"download {key} failed: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink(missing_ok=True)
        except (NotADirectoryError, IsADirectoryError):
            pass
        except OSError as exc:
            raise StorageUnavailable(f"delete {key} failed: {exc.strerror or exc}") from exc

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys under `prefix` (a folder path ending in '/'), including a failed write's temp files."""
        base = self.root / _safe_key(prefix.rstrip("/"))
        try:
            for folder, _, files in os.walk(base):
                for name in files:
                    yield (Path(folder) / name).relative_to(self.root).as_posix()
        except OSError as exc:
            raise StorageUnavailable(f"list {prefix} failed: {exc.strerror or exc}") from exc

    def signature(self, key: str, expires: int) -> str:
        return hmac.new(self.secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def verify(self, key: str, expires: int, signature: str) -> bool:
        return expires >= time.time() and hmac.compare_digest(self.signature(key, expires), signature)

    def download_url(self, key: str, filename: str | None = None) -> str:
        expires = int(time.time()) + self.ttl
        query: dict[str, Any] = {"expires": expires, "signature": self.signature(key, expires)}
        if filename:
            query["filename"] = safe_filename(filename, key.rsplit("/", 1)[-1])
        return f"{self.base_url}/v1/objects/{quote(key)}?{urlencode(query)}"

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageUnavailable(f"storage directory {self.root} is missing")
        if not os.access(self.root, os.W_OK):
            raise StorageUnavailable(f"storage directory {self.root} is not writable")


def make_store(settings: Settings) -> S3Store | LocalStore:
    return S3Store(settings) if settings.storage_backend == "s3" else LocalStore(settings)


def probe_store(settings: Settings, timeout: float = PROBE_TIMEOUT_SECONDS) -> S3Store | LocalStore:
    """A store for readiness probes: connect and read each bounded by `timeout`, one try, no retries, so
    `check()` answers within about twice `timeout` however the backend misbehaves (refuses, hangs)."""
    if settings.storage_backend != "s3":
        return LocalStore(settings)
    return S3Store(settings, connect_timeout=timeout, read_timeout=timeout, max_attempts=1)
