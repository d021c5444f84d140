"""/v1/openapi.json: the generated API description (public)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.openapi import build_spec

bp = Blueprint("openapi", __name__)


@bp.get("/v1/openapi.json")
def spec() -> Response:
    return jsonify(build_spec())
