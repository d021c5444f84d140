"""Trained models for sampling jobs: the tenant's registry rows, and loaded models cached per process.

A worker serving a bulk batch runs hundreds of jobs on one model; loading its checkpoint once (keyed by
the checkpoint's sha256, a few models at most) makes every job after the first start at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections import OrderedDict

import torch
from sqlalchemy.orm import Session, sessionmaker

from shared import registry
from shared.models import TrainedModel
from shared.storage import ObjectNotFound, ObjectStore
from worker.engine import api as engine
from worker.engine.api import LoadedModel
from worker.runners.base import JobError

log = logging.getLogger(__name__)

MAX_CACHED_MODELS = 3

_cache: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
_lock = threading.Lock()


def model_row(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, model_id: uuid.UUID, field: str = "model_id"
) -> TrainedModel:
    with sessions() as session:
        row = registry.get_model(session, tenant_id, model_id)
    if row is None:
        raise JobError("model_not_found", f"{field}: model {model_id} not found")
    return row


def newest_classifier(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, dataset: str
) -> TrainedModel | None:
    """The tenant's most recent CNN trained on `dataset`."""
    with sessions() as session:
        return registry.newest_classifier(session, tenant_id, dataset)


def load_model(
    row: TrainedModel, store: ObjectStore, device: torch.device, sessions: sessionmaker[Session] | None = None
) -> LoadedModel:
    """The model of a registry row, loaded once per process. A checkpoint that is gone or fails its
    sha256 is a JobError `checkpoint_missing` (recorded on the row when `sessions` is given, so the model's
    view says so); an unreachable store raises StorageUnavailable and the job is retried."""
    key = (row.checkpoint_sha256, str(device))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    try:
        checkpoint = store.get_bytes(row.checkpoint_key)
    except ObjectNotFound:
        checkpoint = None
    if checkpoint is None or hashlib.sha256(checkpoint).hexdigest() != row.checkpoint_sha256:
        what = "missing from storage" if checkpoint is None else "damaged (its sha256 does not match)"
        log.error("model %s: checkpoint %s is %s", row.id, row.checkpoint_key, what)
        if sessions is not None:
            _mark_checkpoint(sessions, row.id, missing=True)
        # The message names the model, never the internal object key.
        raise JobError(
            "checkpoint_missing",
            f"model {row.id} ({row.name} v{row.version}): its checkpoint is {what}; train the model again",
        )
    model = engine.load(checkpoint, device)
    if sessions is not None and row.checkpoint_missing_at is not None:
        _mark_checkpoint(sessions, row.id, missing=False)  # restored since it was found missing
    with _lock:
        _cache[key] = model
        while len(_cache) > MAX_CACHED_MODELS:
            _cache.popitem(last=False)
    return model


def _mark_checkpoint(sessions: sessionmaker[Session], model_id: uuid.UUID, missing: bool) -> None:
    with sessions.begin() as session:
        registry.mark_checkpoint(session, model_id, missing)


def clear_cache() -> None:
    with _lock:
        _cache.clear()
