"""Trained models for sampling jobs: the tenant's registry rows, and loaded models cached per process.

A worker serving a bulk batch runs hundreds of jobs on one model; loading its checkpoint once (keyed by
the checkpoint's sha256, a few models at most) makes every job after the first start at once.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import OrderedDict

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import TrainedModel
from shared.specs import Family
from shared.storage import ObjectStore
from worker.engine import api as engine
from worker.engine.api import LoadedModel
from worker.runners.base import JobError

MAX_CACHED_MODELS = 3

_cache: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
_lock = threading.Lock()


def model_row(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, model_id: uuid.UUID, field: str = "model_id"
) -> TrainedModel:
    with sessions() as session:
        row = session.scalar(
            select(TrainedModel).where(TrainedModel.id == model_id, TrainedModel.tenant_id == tenant_id)
        )
    if row is None:
        raise JobError("model_not_found", f"{field}: model {model_id} not found")
    return row


def newest_classifier(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, dataset: str
) -> TrainedModel | None:
    """The tenant's most recent CNN trained on `dataset`."""
    with sessions() as session:
        return session.scalar(
            select(TrainedModel)
            .where(
                TrainedModel.tenant_id == tenant_id,
                TrainedModel.family == Family.cnn,
                TrainedModel.dataset == dataset,
            )
            .order_by(TrainedModel.created_at.desc(), TrainedModel.version.desc())
            .limit(1)
        )


def load_model(row: TrainedModel, store: ObjectStore, device: torch.device) -> LoadedModel:
    key = (row.checkpoint_sha256, str(device))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    checkpoint = store.get_bytes(row.checkpoint_key)
    if hashlib.sha256(checkpoint).hexdigest() != row.checkpoint_sha256:
        raise RuntimeError(f"checkpoint of model {row.id} does not match its recorded sha256")
    model = engine.load(checkpoint, device)
    with _lock:
        _cache[key] = model
        while len(_cache) > MAX_CACHED_MODELS:
            _cache.popitem(last=False)
    return model


def clear_cache() -> None:
    with _lock:
        _cache.clear()
