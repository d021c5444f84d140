"""`genq admin webhook-secret`: made once and shown once; --rotate replaces it, the old one still signing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from genq.admin import upgrade_database
from genq.main import main
from shared.db import dispose_engines, engine_for
from shared.models import Tenant
from shared.tenants import create_tenant, find_tenant
from shared.webhooks import signing_secrets


def test_the_secret_is_shown_once_and_rotated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GENQ_DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'genq.db'}"
    upgrade_database(url)
    with Session(engine_for(url)) as session:
        create_tenant(session, "acme")
        session.commit()
    admin = ["admin", "--data-dir", str(tmp_path)]

    assert main([*admin, "webhook-secret", "acme"]) == 0
    first = capsys.readouterr().out.strip()
    assert first.startswith("whsec_")
    assert main([*admin, "webhook-secret", "acme"]) == 1  # not shown again
    assert "already has a webhook secret" in capsys.readouterr().err
    assert main([*admin, "webhook-secret", "acme", "--rotate"]) == 0
    second = capsys.readouterr().out.strip()
    assert second.startswith("whsec_") and second != first
    assert main([*admin, "webhook-secret", "nobody"]) == 1

    with Session(engine_for(url)) as session:
        tenant = find_tenant(session, "acme")
        assert isinstance(tenant, Tenant)
        assert signing_secrets(tenant) == [second, first]  # both sign during the grace
    dispose_engines(url)
