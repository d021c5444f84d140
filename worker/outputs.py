"""A job's outputs in object storage: uploaded under `tenants/<tenant>/jobs/<job>/<name>`, each remembered
with its size and sha256 so the job's Artifact rows can be written when it finishes."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

from shared.models import Artifact
from shared.storage import ObjectStore, job_key

CONTENT_TYPES = {
    ".png": "image/png",
    ".json": "application/json",
    ".tar": "application/x-tar",
    ".pt": "application/octet-stream",
}


def content_type_for(name: str) -> str:
    return CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")


@dataclass(frozen=True)
class StoredObject:
    name: str  # "grid.png", "shards/00000.tar"
    key: str
    content_type: str
    size: int
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


class JobOutputs:
    def __init__(self, store: ObjectStore, tenant_id: uuid.UUID, job_id: uuid.UUID) -> None:
        self.store = store
        self.tenant_id = tenant_id
        self.job_id = job_id
        self.stored: list[StoredObject] = []  # the artifacts, in upload order

    def key(self, name: str) -> str:
        return job_key(self.tenant_id, self.job_id, name)

    def put_bytes(self, name: str, data: bytes, content_type: str | None = None) -> StoredObject:
        content_type = content_type or content_type_for(name)
        self.store.put_bytes(self.key(name), data, content_type)
        return self._remember(name, content_type, len(data), hashlib.sha256(data).hexdigest())

    def put_file(self, name: str, path: Path, content_type: str | None = None) -> StoredObject:
        content_type = content_type or content_type_for(name)
        self.store.put_file(self.key(name), path, content_type)
        return self._remember(name, content_type, path.stat().st_size, file_sha256(path))

    def _remember(self, name: str, content_type: str, size: int, sha256: str) -> StoredObject:
        stored = StoredObject(name, self.key(name), content_type, size, sha256)
        self.stored = [s for s in self.stored if s.name != name] + [stored]
        return stored

    def artifact_rows(self) -> list[Artifact]:
        return [
            Artifact(
                job_id=self.job_id,
                tenant_id=self.tenant_id,
                name=s.name,
                key=s.key,
                content_type=s.content_type,
                size=s.size,
                sha256=s.sha256,
            )
            for s in self.stored
        ]
