"""An API over SQLite in tmp_path with the local object store and a scheduler wake that records calls."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.app import create_app
from shared.db import dispose_engines, engine_for
from shared.models import Base, Batch, Dataset, Job, TrainedModel, utcnow
from shared.settings import Settings
from shared.specs import Family
from shared.tenants import create_api_key, create_tenant
from tests.conftest import free_port


@dataclass
class RecordingWake:
    """Records the queues the API woke the scheduler for, one set per call."""

    calls: list[set[str]] = field(default_factory=list)

    def __call__(self, queues: Iterable[str]) -> None:
        self.calls.append(set(queues))


@dataclass
class Tenant:
    id: uuid.UUID
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    # Nothing listens on the broker port: unit tests never reach a broker.
    return Settings(
        environment="test",
        data_dir=tmp_path,
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        public_base_url="http://genq.test",
        max_upload_bytes=64 * 1024,
        rate_limit_storage_url="memory://",
        rate_limit="100000/second",  # tests of the limit set their own
    )


@pytest.fixture()
def session(settings: Settings) -> Iterator[Session]:
    engine = engine_for(settings.sql_url)
    Base.metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as session:
        yield session
    dispose_engines(settings.sql_url)


@pytest.fixture()
def wakes() -> RecordingWake:
    return RecordingWake()


@pytest.fixture()
def app(settings: Settings, session: Session, wakes: RecordingWake) -> Flask:
    app = create_app(settings, wake=wakes)
    app.config["GENQ_CHECK_RESPONSES"] = True  # every answer of the suite checked against its model
    return app


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def make_tenant(session: Session, name: str) -> Tenant:
    tenant = create_tenant(session, name)
    _, key = create_api_key(session, tenant.id, "test")
    session.commit()
    return Tenant(tenant.id, key)


@pytest.fixture()
def tenant(session: Session) -> Tenant:
    return make_tenant(session, "alice")


@pytest.fixture()
def other(session: Session) -> Tenant:
    return make_tenant(session, "bob")


def add_model(session: Session, tenant_id: uuid.UUID, family: str = "gan", **extra: Any) -> TrainedModel:
    model = TrainedModel(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        family=Family(family),
        name=extra.pop("name", f"{family}-model"),
        version=extra.pop("version", 1),
        dataset="fashion-mnist",
        image_size=28,
        channels=1,
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        checkpoint_key=f"tenants/{tenant_id}/models/{uuid.uuid4()}/model.pt",
        checkpoint_sha256="0" * 64,
        created_at=extra.pop("created_at", utcnow()),
        **extra,
    )
    session.add(model)
    session.commit()
    return model


def add_dataset(session: Session, tenant_id: uuid.UUID) -> Dataset:
    dataset = Dataset(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        name="mine",
        format="npz",
        object_key=f"tenants/{tenant_id}/datasets/x/data.npz",
        size_bytes=10,
        sha256="0" * 64,
        num_images=4,
        image_size=28,
        channels=1,
        created_at=utcnow(),
    )
    session.add(dataset)
    session.commit()
    return dataset


def count_rows(session: Session) -> tuple[int, int]:
    """(jobs, batches) in the database, read fresh."""
    session.expire_all()
    return session.scalar(select(func.count()).select_from(Job)), session.scalar(
        select(func.count()).select_from(Batch)
    )
