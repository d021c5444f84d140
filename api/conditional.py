"""Strong ETags on reads, so a client polling an unchanged resource gets `304 Not Modified` and no body.

The tag is a hash of the view with its download URLs left out, plus the URL epoch (api/download_urls.py).
Every API process (and replica) computes the same tag for the same row, though each signs its own URLs;
and since URLs are minted afresh each epoch, a copy a client keeps through 304s carries URLs that stay
valid at least half their lifetime past the moment its tag stops matching.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask import Response, jsonify, request
from werkzeug.http import http_date

from api.context import api


def _without_urls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_urls(v) for k, v in value.items() if k != "url" and not k.endswith("_url")}
    if isinstance(value, list):
        return [_without_urls(v) for v in value]
    return value


def view_tag(view: dict[str, Any], epoch: int | None = None) -> str:
    """The ETag (unquoted) of a JSON view in a download-URL epoch (default: the current one)."""
    epoch = api().urls.epoch() if epoch is None else epoch
    content = json.dumps([epoch, _without_urls(view)], sort_keys=True, default=str)
    return hashlib.sha1(content.encode(), usedforsecurity=False).hexdigest()


def conditional(view: dict[str, Any], tag: str | None = None) -> Response:
    """The view as JSON with its ETag; a bodiless 304 when the request's If-None-Match holds the tag."""
    response = jsonify(view)
    response.set_etag(tag or view_tag(view))
    return response.make_conditional(request)


def not_modified(tag: str) -> Response:
    """The bodiless 304 for a copy already known to carry `tag` (no view built)."""
    response = Response(status=304, headers={"Date": http_date()})  # as make_conditional's 304 has
    response.set_etag(tag)
    return response
