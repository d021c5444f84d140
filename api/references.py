"""Checks at submit time that a job's references exist, belong to the tenant, and fit the job.

train needs an uploaded dataset (when not built in); generate/edit need a GAN or VAE; evaluate any model;
a classifier must be a CNN. Missing (or another tenant's) -> 404, wrong kind -> 422, the field named.
Checks for a whole batch load every referenced row in two queries.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.errors import field_error
from shared import registry
from shared.specs import BUILTIN_DATASETS, EditParams, Family, JobKind, Spec

SAMPLERS = (Family.gan, Family.vae)


@dataclass(frozen=True)
class Reference:
    field: str  # relative to the job's params: "model_id", "classifier_id", "dataset", "source.dataset"
    table: str  # "model" | "dataset"
    value: str
    families: tuple[Family, ...] = ()  # models: the families allowed; empty: any


def references(kind: JobKind, params: Spec) -> list[Reference]:
    refs: list[Reference] = []
    if kind == JobKind.train:
        dataset = params.dataset  # type: ignore[attr-defined]
        if dataset not in BUILTIN_DATASETS:
            refs.append(Reference("dataset", "dataset", dataset))
        return refs
    families = SAMPLERS if kind in (JobKind.generate, JobKind.edit) else ()
    refs.append(Reference("model_id", "model", str(params.model_id), families))  # type: ignore[attr-defined]
    classifier = getattr(params, "classifier_id", None)
    if classifier is not None:
        refs.append(Reference("classifier_id", "model", str(classifier), (Family.cnn,)))
    if isinstance(params, EditParams) and params.source and params.source.dataset not in BUILTIN_DATASETS:
        refs.append(Reference("source.dataset", "dataset", params.source.dataset))
    return refs


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def check_references(
    session: Session, tenant_id: uuid.UUID, jobs: Sequence[tuple[str, JobKind, Spec]]
) -> None:
    """`jobs`: (params field prefix, kind, parsed params) per job. Raises the first problem found."""
    wanted: dict[Reference, str] = {}  # each distinct reference, with the first job that makes it
    for prefix, kind, params in jobs:
        for ref in references(kind, params):
            wanted.setdefault(ref, prefix)
    if not wanted:
        return
    ids = {t: {_uuid(r.value) for r in wanted if r.table == t} - {None} for t in ("model", "dataset")}
    families = registry.model_families(session, tenant_id, ids["model"])
    datasets = registry.existing_datasets(session, tenant_id, ids["dataset"])
    for ref, prefix in wanted.items():
        field = f"{prefix}.{ref.field}"
        ref_id = _uuid(ref.value)
        if ref_id is None:
            raise field_error(422, "invalid_request", field, f"{ref.value!r} is not a {ref.table} id")
        if ref.table == "dataset":
            if ref_id not in datasets:
                raise field_error(404, "not_found", field, f"no dataset {ref_id}")
            continue
        family = families.get(ref_id)
        if family is None:
            raise field_error(404, "not_found", field, f"no model {ref_id}")
        if ref.families and family not in ref.families:
            allowed = " or ".join(f.value for f in ref.families)
            raise field_error(
                422, "invalid_reference", field, f"model {ref_id} is a {family.value}, not {allowed}"
            )
