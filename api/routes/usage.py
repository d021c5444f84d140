"""/v1/usage: the tenant's queued and running jobs, worker time used today, and its limits."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.auth import tenant_id
from api.context import db
from api.openapi import operation
from api.schemas import UsageView
from shared.models import Tenant
from shared.usage import usage_view

bp = Blueprint("usage", __name__, url_prefix="/v1/usage")


@bp.get("")
@operation({200: UsageView}, (401,))
def read() -> Response:
    """Your queued and running jobs, worker time today, and your limits"""
    session = db()
    tenant = session.get(Tenant, tenant_id())
    return jsonify(usage_view(session, tenant))
