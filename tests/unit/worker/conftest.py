"""An SQLite database with the full schema and one tenant, per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine
from shared.models import Base, Job, Tenant
from shared.specs import JobKind


@pytest.fixture()
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'genq.db'}")
    Base.metadata.create_all(engine)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


@pytest.fixture()
def tenant_id(sessions: sessionmaker[Session]) -> uuid.UUID:
    with sessions.begin() as session:
        tenant = Tenant(name=f"t-{uuid.uuid4().hex[:6]}")
        session.add(tenant)
        session.flush()
        return tenant.id


@pytest.fixture()
def make_job(sessions: sessionmaker[Session], tenant_id: uuid.UUID):  # type: ignore[no-untyped-def]
    def make(kind: JobKind = JobKind.train, **values: Any) -> uuid.UUID:
        with sessions.begin() as session:
            values.setdefault("queue", "q")
            job = Job(tenant_id=tenant_id, kind=kind, params={}, **values)
            session.add(job)
            session.flush()
            return job.id

    return make
