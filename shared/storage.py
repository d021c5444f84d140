"""Object storage behind one small interface: S3 (boto3: AWS, MinIO, moto) or a local directory.

Keys live under the tenant and job: `tenants/<tenant>/jobs/<job>/<name>`. Downloads are URLs minted at
read time: S3 presigned URLs, or for the local store an HMAC-signed, expiring link served by the API.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import time
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote, urlencode

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from shared.settings import Settings


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
    def download_url(self, key: str, filename: str | None = None) -> str: ...
    def check(self) -> None: ...


def job_key(tenant_id: object, job_id: object, name: str) -> str:
    return f"tenants/{tenant_id}/jobs/{job_id}/{name}"


def dataset_key(tenant_id: object, dataset_id: object, filename: str) -> str:
    return f"tenants/{tenant_id}/datasets/{dataset_id}/{filename}"


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid object key {key!r}")
    return key


class S3Store:
    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.ttl = settings.download_url_ttl_seconds
        common = dict(
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=BotoConfig(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"}),
        )
        self.client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, **common)
        # Presigned URLs must name the address clients use (compose: localhost:9000, not minio:9000).
        public = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        self.signer = boto3.client("s3", endpoint_url=public, **common)

    def _call(self, what: str, key: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise ObjectNotFound(f"{key}: no such object") from exc
            raise StorageError(f"{what} {self.bucket}/{key} failed: {code or exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"{what} {self.bucket}/{key} failed: {exc}") from exc

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
        response = self._call("get", key, self.client.get_object, Bucket=self.bucket, Key=key)
        return response["Body"].read()

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

    def download_url(self, key: str, filename: str | None = None) -> str:
        params = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return self.signer.generate_presigned_url("get_object", Params=params, ExpiresIn=self.ttl)

    def check(self) -> None:
        self._call("head bucket", "", self.client.head_bucket, Bucket=self.bucket)


class LocalStore:
    """A directory standing in for a bucket (embedded mode). Writes are atomic (temp file + rename)."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.storage_dir
        self.root.mkdir(parents=True, exist_ok=True)
        self.secret = settings.signing_secret.encode()
        self.base_url = settings.public_base_url.rstrip("/")
        self.ttl = settings.download_url_ttl_seconds

    def path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def _write(self, key: str, write) -> None:  # type: ignore[no-untyped-def]
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{time.monotonic_ns()}.part")
        try:
            write(temp)
            temp.replace(target)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StorageError(f"write {key} failed: {exc}") from exc

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
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{key}: no such object") from exc

    def download_file(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self.path(key), path)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{key}: no such object") from exc

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def signature(self, key: str, expires: int) -> str:
        return hmac.new(self.secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def verify(self, key: str, expires: int, signature: str) -> bool:
        return expires >= time.time() and hmac.compare_digest(self.signature(key, expires), signature)

    def download_url(self, key: str, filename: str | None = None) -> str:
        expires = int(time.time()) + self.ttl
        query = {"expires": expires, "signature": self.signature(key, expires)}
        if filename:
            query["filename"] = filename
        return f"{self.base_url}/v1/objects/{quote(key)}?{urlencode(query)}"

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageError(f"storage directory {self.root} is missing")


def make_store(settings: Settings) -> S3Store | LocalStore:
    return S3Store(settings) if settings.storage_backend == "s3" else LocalStore(settings)
