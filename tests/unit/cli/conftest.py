"""The real Flask API served over HTTP on a thread (SQLite in tmp_path, local store, no scheduler: jobs
stay held), so the CLI is tested against the routes it will meet, through real sockets."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from shared.db import make_engine
from shared.models import Base
from shared.settings import Settings
from shared.tenants import create_api_key, create_tenant
from tests.conftest import free_port


@dataclass
class LiveApi:
    url: str
    key: str
    tenant_id: uuid.UUID
    settings: Settings
    engine: Engine
    woken: list[str] = field(default_factory=list)  # queues the API woke the scheduler for

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)


@pytest.fixture()
def live_api(tmp_path: Path) -> Iterator[LiveApi]:
    from api.app import create_app

    port = free_port()
    settings = Settings(
        environment="test",
        data_dir=tmp_path / "data",
        broker_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: no broker in unit tests
        public_base_url=f"http://127.0.0.1:{port}",
        rate_limit_storage_url="memory://",  # request limits counted in this process
    )
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.sql_url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        tenant = create_tenant(session, "cli-tests")
        _, key = create_api_key(session, tenant.id, "cli")
        session.commit()
        tenant_id = tenant.id
    woken: list[str] = []
    app = create_app(settings, wake=woken.extend)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LiveApi(f"http://127.0.0.1:{port}", key, tenant_id, settings, engine, woken)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        engine.dispose()
        from shared.db import dispose_engines

        dispose_engines(settings.sql_url)  # the app's engine


@pytest.fixture()
def acme_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated SQLite database in tmp_path (the admin commands' --data-dir) with a tenant "acme"."""
    from genq.admin import upgrade_database
    from shared.db import dispose_engines, engine_for

    monkeypatch.delenv("GENQ_DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'genq.db'}"
    upgrade_database(url)
    with Session(engine_for(url)) as session:
        create_tenant(session, "acme")
        session.commit()
    yield url
    dispose_engines(url)
