"""`genq admin limits` sets a tenant's quotas; `genq usage` shows them; a submit over a quota is refused
with the API's message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from genq.main import main
from shared.db import engine_for
from shared.tenants import find_tenant
from tests.unit.cli.conftest import LiveApi
from tests.unit.cli.test_client import run_cli


def test_admin_sets_and_removes_limits(
    tmp_path: Path, acme_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = acme_database
    admin = ["admin", "--data-dir", str(tmp_path), "limits", "acme"]

    assert main([*admin, "--weight", "2", "--max-queued", "100", "--rate-limit", "5/second"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["limits"] == {
        "weight": 2.0,
        "max_queued_jobs": 100,
        "max_running_jobs": None,
        "gpu_seconds_per_day": None,
        "rate_limit": "5/second",
    }
    assert main([*admin, "--max-queued", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["limits"]["max_queued_jobs"] is None
    for bad in (["--weight", "0"], ["--max-running", "many"], ["--rate-limit", "often"]):
        assert main([*admin, *bad]) == 1, bad
        assert capsys.readouterr().err.startswith("genq: ")
    with Session(engine_for(url)) as session:
        tenant = find_tenant(session, "acme")
        assert tenant is not None and (tenant.weight, tenant.rate_limit) == (2.0, "5/second")


def test_usage_and_a_submit_over_the_queued_quota(
    live_api: LiveApi, capsys: pytest.CaptureFixture[str]
) -> None:
    with live_api.session() as session:
        tenant = find_tenant(session, str(live_api.tenant_id))
        assert tenant is not None
        tenant.max_queued_jobs = 1
        session.commit()
    train = ["submit", "train", "--family", "cnn", "--option", "max_steps=1"]
    assert run_cli(live_api, *train, capsys=capsys)[0] == 0
    code, _, err = run_cli(live_api, *train, capsys=capsys)
    assert code == 1 and "max_queued_jobs quota reached (1 of 1)" in err
    code, out, _ = run_cli(live_api, "usage", capsys=capsys)
    assert code == 0 and "queued 1  running 0" in out and "max_queued_jobs 1" in out
    code, out, _ = run_cli(live_api, "usage", "--json", capsys=capsys)
    assert json.loads(out)["limits"]["max_queued_jobs"] == 1
