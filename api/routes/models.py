"""/v1/models: the tenant's trained-model registry, newest first."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify

from api.auth import tenant_id
from api.context import api, db
from api.openapi import operation, query_of
from api.pagination import page, page_query
from api.queries import get_owned
from api.schemas import ModelList, ModelQuery, ModelView
from api.views import model_view
from shared import registry
from shared.models import TrainedModel, utcnow
from shared.specs import Family
from shared.storage import StorageError, probe_store

bp = Blueprint("models", __name__, url_prefix="/v1/models")
log = logging.getLogger("genq.api")
PROBE_EXTENSION = "genq.checkpoint_probe"


@bp.get("")
@operation({200: ModelList}, (400, 401), query=ModelQuery)
def list_models() -> Response:
    """List trained models, newest first"""
    params = query_of(ModelQuery)
    query = registry.models_query(tenant_id(), [Family(f) for f in params.family or ()], params.name)
    paged = page_query(query, TrainedModel.created_at, TrainedModel.id, params.cursor, params.limit)
    models, next_cursor = page(db().scalars(paged).all(), params.limit)
    store = api().store
    return jsonify({"models": [model_view(m, store) for m in models], "next_cursor": next_cursor})


@bp.get("/<model_id>")
@operation({200: ModelView}, (401, 404))
def read(model_id: str) -> Response:
    """Read a model"""
    session = db()
    model = get_owned(session, TrainedModel, model_id, tenant_id())
    if model.checkpoint_missing_at is None and _checkpoint_gone(model.checkpoint_key):
        # Recorded, so listings (which never ask storage) say so too.
        model.checkpoint_missing_at = utcnow()
        session.commit()
    return jsonify(model_view(model, api().store))


def _checkpoint_gone(key: str) -> bool:
    """One HEAD through a probe store (about a second at most, no retries): False when storage does not
    answer, since an outage says nothing about the checkpoint."""
    store = current_app.extensions.get(PROBE_EXTENSION)
    if store is None:
        store = current_app.extensions[PROBE_EXTENSION] = probe_store(api().settings)
    try:
        return not store.exists(key)
    except StorageError as exc:
        log.warning("checkpoint presence unknown: %s", exc)
        return False
