"""/v1/openapi.json: the API description, derived from the routes (public)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.openapi import DOCUMENT, build_spec, operation

bp = Blueprint("openapi", __name__)


@bp.get("/v1/openapi.json")
@operation({200: None}, public=True, content=DOCUMENT)
def spec() -> Response:
    """This document"""
    return jsonify(build_spec())
