"""shared/registry.py on SQLite: versions per name, tenant scoping, the newest classifier, marks."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session, sessionmaker

from shared import registry
from shared.models import Tenant, TrainedModel
from shared.specs import Family


def add(session: Session, tenant_id: uuid.UUID, name: str, family: Family = Family.cnn) -> TrainedModel:
    model = registry.add_model(
        session, tenant_id=tenant_id, family=family, name=name, dataset="digits", image_size=28,
        channels=1, checkpoint_key="k", checkpoint_sha256="0" * 64,
    )  # fmt: skip
    session.flush()
    return model


def test_versions_count_per_tenant_and_name(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions.begin() as session:
        other = Tenant(name="other")
        session.add(other)
        session.flush()
        versions = [add(session, tenant_id, "a").version, add(session, tenant_id, "a").version]
        versions += [add(session, tenant_id, "b").version, add(session, other.id, "a").version]
        assert versions == [1, 2, 1, 1]
        gan = add(session, tenant_id, "g", Family.gan)
        assert registry.get_model(session, other.id, gan.id) is None
        assert registry.model_families(session, tenant_id, {gan.id, uuid.uuid4()}) == {gan.id: Family.gan}
        newest = registry.newest_classifier(session, tenant_id, "digits")
        assert newest is not None and newest.family == Family.cnn
        assert registry.newest_classifier(session, tenant_id, "fashion-mnist") is None
        assert [m.name for m in session.scalars(registry.models_query(tenant_id, [Family.gan]))] == ["g"]


def test_marks_and_evaluations(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions.begin() as session:
        model_id = add(session, tenant_id, "a").id
    with sessions.begin() as session:
        registry.mark_checkpoint(session, model_id, missing=True)
        registry.record_evaluation(session, model_id, {"fd": 1.0})
    with sessions() as session:
        model = session.get(TrainedModel, model_id)
        assert model is not None and model.checkpoint_missing_at is not None
        assert model.metrics == {"evaluation": {"fd": 1.0}}
    with sessions.begin() as session:
        registry.mark_checkpoint(session, model_id, missing=False)
    with sessions() as session:
        assert session.get(TrainedModel, model_id).checkpoint_missing_at is None  # type: ignore[union-attr]
