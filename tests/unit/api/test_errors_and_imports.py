"""JSON errors for the unexpected, and the API's import boundary (no torch, no worker)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from api.validation import MAX_JSON_BYTES
from tests.unit.api.conftest import Tenant

ROOT = Path(__file__).resolve().parents[3]


def test_unexpected_errors_are_json_without_internals(app: Flask, tenant: Tenant, caplog) -> None:  # type: ignore[no-untyped-def]
    @app.get("/v1/explode")
    def explode() -> None:
        raise RuntimeError("secret connection string postgres://user:pw@db")

    response = app.test_client().get("/v1/explode", headers=tenant.headers)
    assert response.status_code == 500
    assert response.json == {
        "error": {
            "code": "internal_error",
            "message": "internal error; the server logged the details",
            "details": [],
        }
    }
    assert "secret" not in response.get_data(as_text=True)
    assert "secret connection string" in caplog.text  # the log has it


def test_auth_is_required_under_v1_and_is_json(client: FlaskClient, tenant: Tenant) -> None:
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Token {tenant.key}"}):
        response = client.get("/v1/jobs", headers=headers)
        assert response.status_code == 401 and response.json["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/v1/jobs", headers={"Authorization": f"bearer {tenant.key}"}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/v1/openapi.json").status_code == 200


def test_json_bodies_are_capped(client: FlaskClient, tenant: Tenant) -> None:
    body = b'{"items": [' + b" " * MAX_JSON_BYTES + b"]}"
    response = client.post("/v1/batches", data=body, content_type="application/json", headers=tenant.headers)
    assert response.status_code == 413 and response.json["error"]["code"] == "payload_too_large"


def test_the_api_never_imports_torch_or_the_worker(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys
        from sqlalchemy.orm import Session
        from api.app import create_app
        from shared.db import engine_for
        from shared.models import Base
        from shared.settings import Settings
        from shared.tenants import create_api_key, create_tenant

        settings = Settings(environment="test", data_dir={str(tmp_path)!r}, broker_url="redis://127.0.0.1:9/0")
        Base.metadata.create_all(engine_for(settings.sql_url))
        with Session(engine_for(settings.sql_url)) as session:
            _, key = create_api_key(session, create_tenant(session, "t").id)
            session.commit()
        client = create_app(settings, wake=lambda queues: None).test_client()
        headers = {{"Authorization": "Bearer " + key}}
        train = {{"kind": "train", "params": {{"family": "cnn"}}}}
        statuses = [
            client.post("/v1/jobs", json=train, headers=headers).status_code,
            client.get("/v1/jobs", headers=headers).status_code,
            client.get("/v1/models", headers=headers).status_code,
            client.get("/v1/openapi.json").status_code,
        ]
        loaded = [m for m in sys.modules if m == "torch" or m.startswith(("torch.", "worker"))]
        print(json.dumps({{"statuses": statuses, "loaded": loaded}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"statuses": [202, 200, 200, 200], "loaded": []}
