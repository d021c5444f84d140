"""/v1/models: the tenant's trained-model registry, newest first."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select

from api.auth import tenant_id
from api.context import api, db
from api.pagination import page, page_limit, page_query
from api.queries import get_owned
from api.validation import query_choice, query_text
from api.views import model_view
from shared.models import TrainedModel
from shared.specs import Family

bp = Blueprint("models", __name__, url_prefix="/v1/models")


@bp.get("")
def list_models() -> Response:
    families = query_choice("family", [f.value for f in Family], multiple=True)
    name = query_text("name")
    limit = page_limit()
    query = select(TrainedModel).where(TrainedModel.tenant_id == tenant_id())
    if families:
        query = query.where(TrainedModel.family.in_([Family(f) for f in families]))
    if name is not None:
        query = query.where(TrainedModel.name == name)
    cursor = request.args.get("cursor")
    rows = db().scalars(page_query(query, TrainedModel.created_at, TrainedModel.id, cursor, limit)).all()
    models, next_cursor = page(rows, limit)
    store = api().store
    return jsonify({"models": [model_view(m, store) for m in models], "next_cursor": next_cursor})


@bp.get("/<model_id>")
def read(model_id: str) -> Response:
    return jsonify(model_view(get_owned(db(), TrainedModel, model_id, tenant_id()), api().store))
