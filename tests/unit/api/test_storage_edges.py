"""The API at the storage edge: an unwritable store is a 503, hostile uploads and download names are 4xx or
sanitized (never a 500), and a model whose checkpoint is gone says so."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.app import create_app
from shared.models import Dataset, TrainedModel
from shared.settings import Settings
from shared.storage import LocalStore
from tests.unit.api.conftest import RecordingWake, Tenant, add_model
from tests.unit.api.test_models_datasets import npz_of, png, upload, zip_of
from tests.unit.test_datasets import npz_with_lying_header, png_header_only


def _datasets(session: Session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(Dataset))


def test_upload_into_an_unwritable_store_is_503_and_leaves_no_row(
    settings: Settings, session: Session, tenant: Tenant, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the storage directory should be")
    unwritable = settings.model_copy(update={"local_storage_dir": blocker / "objects"})
    client = create_app(unwritable, wake=RecordingWake()).test_client()
    response = upload(client, tenant, npz_of(images=np.zeros((2, 8, 8), np.uint8)), "x.npz")
    assert response.status_code == 503, response.json
    assert response.json["error"]["code"] == "storage_unavailable"
    assert "blocker" not in response.get_data(as_text=True)  # no internal paths in the answer
    assert _datasets(session) == 0


def test_hostile_uploads_are_4xx_naming_the_field(
    client: FlaskClient, tenant: Tenant, session: Session, tmp_path: Path
) -> None:
    bomb = zip_of({"ok.png": png(1), "bomb.png": png_header_only(20_000, 20_000)})
    lying = npz_with_lying_header(tmp_path / "lying.npz", (200_000, 28, 28), bytes(346)).read_bytes()
    for data, filename, says in ((bomb, "bomb.zip", "bomb.png"), (lying, "lying.npz", "images: the header")):
        response = upload(client, tenant, data, filename)
        assert response.status_code == 422, (filename, response.status_code, response.get_data(as_text=True))
        error = response.json["error"]
        assert error["code"] == "invalid_dataset" and error["details"][0]["field"] == "file"
        assert says in error["message"]
    assert _datasets(session) == 0


def test_control_characters_in_a_download_name_are_sanitized(app: Flask, client: FlaskClient) -> None:
    store: LocalStore = app.extensions["genq"].store
    key = "tenants/t1/jobs/j1/attempts/1/grid.png"
    store.put_bytes(key, b"png bytes", "image/png")
    url = urlsplit(store.download_url(key))
    for name in ("evil\r\nSet-Cookie: a=b.png", "nul\x00.png", "tab\t.png", '"quoted".png', "\r\n"):
        response = client.get(f"{url.path}?{url.query}&filename={quote(name)}")
        assert response.status_code == 200, (name, response.status_code)
        disposition = response.headers["Content-Disposition"]
        assert not any(c in disposition for c in "\r\n\x00\t"), disposition
        assert response.data == b"png bytes"
        response.close()


def test_a_model_whose_checkpoint_is_gone_says_so(
    app: Flask, client: FlaskClient, session: Session, tenant: Tenant
) -> None:
    store: LocalStore = app.extensions["genq"].store
    present = add_model(session, tenant.id, name="kept")
    store.put_bytes(present.checkpoint_key, b"weights", "application/octet-stream")
    gone = add_model(session, tenant.id, name="gone")  # its checkpoint was never stored (or was deleted)

    listing = {m["name"]: m for m in client.get("/v1/models", headers=tenant.headers).json["models"]}
    assert listing["kept"]["checkpoint"] == listing["gone"]["checkpoint"] == "available"  # lists never ask

    assert client.get(f"/v1/models/{present.id}", headers=tenant.headers).json["checkpoint"] == "available"
    view = client.get(f"/v1/models/{gone.id}", headers=tenant.headers).json
    assert view["checkpoint"] == "missing"
    # Recorded, so the listing says so from now on without asking storage.
    listing = {m["name"]: m for m in client.get("/v1/models", headers=tenant.headers).json["models"]}
    assert (listing["kept"]["checkpoint"], listing["gone"]["checkpoint"]) == ("available", "missing")
    session.expire_all()
    assert session.get(TrainedModel, gone.id).checkpoint_missing_at is not None  # type: ignore[union-attr]
    assert session.get(TrainedModel, present.id).checkpoint_missing_at is None  # type: ignore[union-attr]


def test_an_unreachable_store_does_not_mark_checkpoints_missing(
    settings: Settings, session: Session, tenant: Tenant, tmp_path: Path
) -> None:
    s3 = settings.model_copy(
        update={
            "storage_backend": "s3",
            "s3_endpoint_url": "http://127.0.0.1:9",  # nothing listens
            "s3_access_key_id": "testing",
            "s3_secret_access_key": "testing",
        }
    )
    client = create_app(s3, wake=RecordingWake()).test_client()
    model = add_model(session, tenant.id)
    assert client.get(f"/v1/models/{model.id}", headers=tenant.headers).json["checkpoint"] == "available"
    session.expire_all()
    assert session.get(TrainedModel, model.id).checkpoint_missing_at is None  # type: ignore[union-attr]
