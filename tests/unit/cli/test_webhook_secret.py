"""`genq admin webhook-secret`: made once and shown once; --rotate replaces it, the old one still signing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from genq.main import main
from shared.db import engine_for
from shared.models import Tenant
from shared.tenants import find_tenant
from shared.webhooks import signing_secrets


def test_the_secret_is_shown_once_and_rotated(
    tmp_path: Path, acme_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = acme_database
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
