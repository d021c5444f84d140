"""A job attempt's outputs in object storage: uploaded under the attempt's own prefix,
`tenants/<tenant>/jobs/<job>/attempts/<n>/<name>`, each remembered with its size and sha256 so the job's
Artifact rows can be written when it finishes.

The attempt in the key is the storage side of the fence: a stale attempt (its lease lost, still running)
writes only under its own prefix, so it can never replace what the winning attempt stored, and its
uploads belong to the job only if its fenced finish commits their rows, which it cannot.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from shared.models import Artifact
from shared.storage import ObjectStore, StorageError, attempt_key

log = logging.getLogger(__name__)

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
    def __init__(self, store: ObjectStore, tenant_id: uuid.UUID, job_id: uuid.UUID, attempt: int) -> None:
        self.store = store
        self.tenant_id = tenant_id
        self.job_id = job_id
        self.attempt = attempt
        self.stored: list[StoredObject] = []  # the artifacts, in upload order

    def key(self, name: str) -> str:
        return attempt_key(self.tenant_id, self.job_id, self.attempt, name)

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

    def discard(self) -> int:
        """Delete this attempt's uploads (its result was dropped: canceled, failed or lost the job).
        Best effort: what cannot be deleted now is left to `genq admin gc`. Returns how many went."""
        keys = [s.key for s in self.stored]
        self.stored = []
        if not keys:
            return 0
        try:
            self.store.delete_many(keys)
        except StorageError as exc:
            log.warning("job %s attempt %d: outputs left for gc: %s", self.job_id, self.attempt, exc)
            return 0
        return len(keys)
