"""Signed local downloads, health and readiness."""

from __future__ import annotations

import shutil
import threading
import time
from urllib.parse import urlsplit

from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from shared.settings import Settings
from shared.storage import LocalStore
from tests.unit.api.conftest import RecordingWake

KEY = "tenants/t1/jobs/j1/grid.png"


def _store(app: Flask) -> LocalStore:
    return app.extensions["genq"].store


def _path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_signed_urls_open_exactly_their_object_until_they_expire(app: Flask, client: FlaskClient) -> None:
    store = _store(app)
    store.put_bytes(KEY, b"png bytes", "image/png")
    store.put_bytes("tenants/t2/jobs/j2/grid.png", b"someone else's", "image/png")
    url = _path_and_query(store.download_url(KEY, "preview.png"))
    response = client.get(url)
    assert response.status_code == 200 and response.data == b"png bytes"
    assert "filename=preview.png" in response.headers["Content-Disposition"]
    response.close()

    expires, expired = int(time.time()) + 60, int(time.time()) - 5
    signature = store.signature(KEY, expires)
    forbidden = [
        f"/v1/objects/{KEY}",
        f"/v1/objects/{KEY}?expires={expires}",
        f"/v1/objects/{KEY}?expires=soon&signature={signature}",
        f"/v1/objects/{KEY}?expires={expires}&signature={'0' * 64}",
        f"/v1/objects/{KEY}?expires={expires + 1}&signature={signature}",
        f"/v1/objects/tenants/t2/jobs/j2/grid.png?expires={expires}&signature={signature}",
        f"/v1/objects/{KEY}?expires={expired}&signature={store.signature(KEY, expired)}",
    ]
    for path in forbidden:
        response = client.get(path)
        assert response.status_code == 403, path
        assert response.json["error"]["code"] == "forbidden"

    missing = "tenants/t1/jobs/j1/none.png"
    assert client.get(_path_and_query(store.download_url(missing))).status_code == 404
    traversal = "tenants/t1/../t2/jobs/j2/grid.png"
    signed = f"?expires={expires}&signature={store.signature(traversal, expires)}"
    assert client.get(f"/v1/objects/{traversal}{signed}").status_code == 404


def test_objects_are_not_served_with_s3_storage(settings: Settings, session) -> None:  # type: ignore[no-untyped-def]
    s3 = settings.model_copy(update={"storage_backend": "s3", "s3_endpoint_url": "http://127.0.0.1:9"})
    client = create_app(s3, wake=RecordingWake()).test_client()
    response = client.get(f"/v1/objects/{KEY}?expires=1&signature=x")
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"


def test_healthz_and_readyz_name_what_is_down(app: Flask, client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    # The unit-test broker port has nothing listening.
    response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json["checks"]
    assert (checks["database"], checks["storage"]) == ("ok", "ok")
    assert checks["broker"] in ("unavailable", "timeout")  # refused, or still being refused at the deadline
    assert response.json["failed"] == ["broker"]
    shutil.rmtree(_store(app).root)
    assert client.get("/readyz").json["failed"] == ["broker", "storage"]


def test_readyz_answers_while_a_dependency_hangs(app: Flask, client: FlaskClient) -> None:
    """A storage check that never returns (S3 accepting connections and answering nothing): /readyz
    still answers, naming it, and a second probe does not start a second check behind the hung one."""
    release, calls = threading.Event(), []

    def hang() -> None:
        calls.append(1)
        release.wait(30)

    _store(app).check = hang  # type: ignore[method-assign]
    try:
        for _ in range(2):
            response = client.get("/readyz")  # were it to wait for the check, this would take 30 s
            assert response.status_code == 503
            assert response.json["checks"]["storage"] == "timeout" and "storage" in response.json["failed"]
            assert response.json["checks"]["database"] == "ok"
        assert calls == [1]
    finally:
        release.set()
