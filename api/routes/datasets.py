"""/v1/datasets: upload (a zip of PNG/JPEG images, or an .npz), list, read.

An upload is streamed to a temporary file, checked from its headers (shared.datasets.inspect_upload),
stored, and only then recorded: a failed upload leaves no row.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import uuid
from pathlib import Path, PurePath

from flask import Blueprint, Response, jsonify, request, url_for

from api.auth import tenant_id
from api.context import api, db
from api.errors import ApiError, field_error
from api.openapi import operation, query_of
from api.pagination import page, page_query
from api.queries import get_owned
from api.schemas import DatasetList, DatasetUpload, DatasetView, PageQuery
from api.views import dataset_view
from shared import registry
from shared.datasets import DatasetError, inspect_upload
from shared.models import Dataset, utcnow
from shared.storage import StorageError, dataset_key

bp = Blueprint("datasets", __name__, url_prefix="/v1/datasets")
log = logging.getLogger("genq.api")
CONTENT_TYPES = {"zip": "application/zip", "npz": "application/octet-stream"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _name(filename: str) -> str:
    name = request.form.get("name") or PurePath(filename.replace("\\", "/")).stem or "dataset"
    name = name.strip()
    if not 1 <= len(name) <= 200 or not name.isprintable():
        raise field_error(422, "invalid_request", "name", "must be 1 to 200 printable characters")
    return name


@bp.post("")
@operation({201: DatasetView}, (401, 413, 415, 422), form=DatasetUpload)
def upload() -> tuple[Response, int, dict[str, str]]:
    """Upload a data set"""
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "upload as multipart/form-data with a 'file' field")
    limit = api().settings.max_upload_bytes
    file = request.files.get("file")
    if file is None or not file.filename:
        raise field_error(422, "invalid_request", "file", "required: a .zip of PNG/JPEG images or an .npz")
    name = _name(file.filename)
    suffix = ".npz" if file.filename.lower().endswith(".npz") else ".zip"
    with tempfile.TemporaryDirectory(prefix="genq-upload-") as temp:
        path = Path(temp) / f"upload{suffix}"
        file.save(path)
        size = path.stat().st_size
        if size > limit:
            raise field_error(413, "payload_too_large", "file", f"{size} bytes: at most {limit} are accepted")
        try:
            summary = inspect_upload(path)
        except DatasetError as exc:
            raise field_error(422, "invalid_dataset", "file", str(exc)) from None
        dataset = Dataset(
            id=uuid.uuid4(),
            tenant_id=tenant_id(),
            name=name,
            format=summary.format,
            size_bytes=size,
            sha256=_sha256(path),
            num_images=summary.count,
            image_size=summary.max_side,
            channels=summary.channels,
            class_names=summary.class_names,
            created_at=utcnow(),
        )
        dataset.object_key = dataset_key(dataset.tenant_id, dataset.id, f"data.{summary.format}")
        store = api().store
        try:
            store.put_file(dataset.object_key, path, CONTENT_TYPES[summary.format])
        except StorageError as exc:
            # Unreachable, timing out or (local store) unwritable: the client can retry the same upload.
            log.error("dataset upload failed: %s", exc)
            raise ApiError(503, "storage_unavailable", "object storage is unavailable; retry later") from None
    session = db()
    session.add(dataset)
    try:
        session.commit()
    except Exception:
        session.rollback()
        try:
            store.delete(dataset.object_key)  # no row, so no object either
        except StorageError as exc:
            log.error("dataset object left behind after a failed insert: %s", exc)
        raise
    return jsonify(dataset_view(dataset)), 201, {"Location": url_for("datasets.read", dataset_id=dataset.id)}


@bp.get("")
@operation({200: DatasetList}, (400, 401), query=PageQuery)
def list_datasets() -> Response:
    """List data sets"""
    params = query_of(PageQuery)
    query = registry.datasets_query(tenant_id())
    paged = page_query(query, Dataset.created_at, Dataset.id, params.cursor, params.limit)
    datasets, next_cursor = page(db().scalars(paged).all(), params.limit)
    return jsonify({"datasets": [dataset_view(d) for d in datasets], "next_cursor": next_cursor})


@bp.get("/<dataset_id>")
@operation({200: DatasetView}, (401, 404))
def read(dataset_id: str) -> Response:
    """Read a data set"""
    return jsonify(dataset_view(get_owned(db(), Dataset, dataset_id, tenant_id())))
