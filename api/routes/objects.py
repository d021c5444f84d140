"""/v1/objects/<key>: downloads from the local object store through signed, expiring URLs.

No API key: the signature over (key, expiry) is the capability, and the key names its tenant, so a URL
minted for one tenant's object opens nothing else. With S3 storage, downloads go to S3 directly.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from flask import Blueprint, Response, request, send_file

from api.context import api
from api.errors import ApiError, not_found
from api.openapi import FILE, operation
from api.schemas import SignedQuery
from shared.storage import LocalStore, StorageError, safe_filename

bp = Blueprint("objects", __name__, url_prefix="/v1/objects")


def _forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


@bp.get("/<path:key>")
@operation({200: None}, (403, 404), query=SignedQuery, public=True, content=FILE)
def download(key: str) -> Response:
    """Download through a signed URL (local storage)"""
    store = api().store
    if not isinstance(store, LocalStore):
        raise not_found("object", key)
    expires, signature = request.args.get("expires", ""), request.args.get("signature", "")
    if not expires.isdigit() or len(expires) > 12 or not signature:
        raise _forbidden("a signed URL needs expires and signature; mint one by reading the job")
    if not store.verify(key, int(expires), signature):
        raise _forbidden("the signature is invalid or the URL has expired")
    try:
        path = store.path(key)
    except StorageError:
        raise not_found("object", key) from None
    if not path.is_file():
        raise not_found("object", key)
    # Not covered by the signature, so anything can arrive here: control characters (CR, LF, NUL) and
    # quotes would break the Content-Disposition header.
    filename = safe_filename(request.args.get("filename"), PurePosixPath(key).name)
    return send_file(path, as_attachment=True, download_name=filename, max_age=0)
