"""The model registry and uploaded datasets in SQL: the queries the API and the worker make of them.

Every read is scoped to one tenant: another tenant's row is simply not found. Writes run in the caller's
session (and so its transaction): a trained model's registry entry is added in the transaction that marks
its training job succeeded, so the entry exists exactly when the job succeeded.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from shared.models import Dataset, TrainedModel, utcnow
from shared.specs import Family

# ---------------------------------------------------------------------------------------------------
# Models


def get_model(session: Session, tenant_id: uuid.UUID, model_id: uuid.UUID) -> TrainedModel | None:
    return session.scalar(
        select(TrainedModel).where(TrainedModel.id == model_id, TrainedModel.tenant_id == tenant_id)
    )


def newest_classifier(session: Session, tenant_id: uuid.UUID, dataset: str) -> TrainedModel | None:
    """The tenant's most recent CNN trained on `dataset`."""
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


def models_query(
    tenant_id: uuid.UUID, families: Sequence[Family] = (), name: str | None = None
) -> Select[tuple[TrainedModel]]:
    """The tenant's models, of the given families (all when empty) and name (any when None)."""
    query = select(TrainedModel).where(TrainedModel.tenant_id == tenant_id)
    if families:
        query = query.where(TrainedModel.family.in_(families))
    if name is not None:
        query = query.where(TrainedModel.name == name)
    return query


def model_families(
    session: Session, tenant_id: uuid.UUID, model_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, Family]:
    """The family of each of these models the tenant has (one query; the others are left out)."""
    if not model_ids:
        return {}
    query = select(TrainedModel.id, TrainedModel.family).where(
        TrainedModel.tenant_id == tenant_id, TrainedModel.id.in_(model_ids)
    )
    return {row.id: row.family for row in session.execute(query)}


def add_model(session: Session, **columns: Any) -> TrainedModel:
    """A registry entry: the next version of the tenant's models of this name (the unique constraint on
    (tenant, name, version) refuses a concurrent duplicate)."""
    latest = session.scalar(
        select(func.max(TrainedModel.version)).where(
            TrainedModel.tenant_id == columns["tenant_id"], TrainedModel.name == columns["name"]
        )
    )
    model = TrainedModel(**columns, version=(latest or 0) + 1)
    session.add(model)
    return model


def mark_checkpoint(session: Session, model_id: uuid.UUID, missing: bool) -> None:
    """Record whether the model's checkpoint was found missing (a fact about the model, not fenced on
    any job): GET /v1/models shows it without asking storage."""
    session.execute(
        update(TrainedModel)
        .where(TrainedModel.id == model_id)
        .values(checkpoint_missing_at=utcnow() if missing else None)
    )


def record_evaluation(session: Session, model_id: uuid.UUID, evaluation: dict[str, Any]) -> None:
    """Put an evaluation's metrics into the model's entry under "evaluation": a read-modify-write of the
    JSON under a row lock, so a concurrent update of the row is not lost."""
    model = session.get(TrainedModel, model_id, with_for_update=True)
    if model is not None:
        model.metrics = {**(model.metrics or {}), "evaluation": evaluation}


# ---------------------------------------------------------------------------------------------------
# Datasets


def get_dataset(session: Session, tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id))


def datasets_query(tenant_id: uuid.UUID) -> Select[tuple[Dataset]]:
    return select(Dataset).where(Dataset.tenant_id == tenant_id)


def existing_datasets(
    session: Session, tenant_id: uuid.UUID, dataset_ids: Collection[uuid.UUID]
) -> set[uuid.UUID]:
    """Which of these dataset ids the tenant has (one query)."""
    if not dataset_ids:
        return set()
    query = select(Dataset.id).where(Dataset.tenant_id == tenant_id, Dataset.id.in_(dataset_ids))
    return set(session.scalars(query))
