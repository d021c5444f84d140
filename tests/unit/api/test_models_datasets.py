"""/v1/models and /v1/datasets: registry reads, uploads checked before anything is stored."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import uuid
import zipfile
from urllib.parse import urlsplit

import numpy as np
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import Dataset, utcnow
from shared.settings import Settings
from tests.unit.api.conftest import Tenant, add_model


def png(colour: int | tuple[int, int, int], size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB" if isinstance(colour, tuple) else "L", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def npz_of(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def upload(client: FlaskClient, tenant: Tenant, data: bytes, filename: str = "shoes.zip", **form: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/datasets",
        data={"file": (io.BytesIO(data), filename), **form},
        headers=tenant.headers,
        content_type="multipart/form-data",
    )


def test_models_newest_first_filtered_with_fresh_urls(
    client: FlaskClient, tenant: Tenant, other: Tenant, session: Session
) -> None:
    base = utcnow()
    old = add_model(session, tenant.id, "cnn", name="clf", created_at=base - dt.timedelta(hours=1))
    new = add_model(
        session, tenant.id, "gan", name="faces", version=2, sample_grid_key="tenants/x/grid.png",
        metrics={"fid": 9.5}, config={"latent_dim": 64}, created_at=base,
    )  # fmt: skip
    add_model(session, other.id, "gan")
    listed = client.get("/v1/models", headers=tenant.headers).json
    assert [m["id"] for m in listed["models"]] == [str(new.id), str(old.id)] and listed["next_cursor"] is None
    assert [m["id"] for m in client.get("/v1/models?family=cnn", headers=tenant.headers).json["models"]] == [
        str(old.id)
    ]
    assert client.get("/v1/models?name=faces", headers=tenant.headers).json["models"][0]["version"] == 2
    page = client.get("/v1/models?limit=1", headers=tenant.headers).json
    assert len(page["models"]) == 1 and page["next_cursor"]
    view = client.get(f"/v1/models/{new.id}", headers=tenant.headers).json
    assert view["metrics"] == {"fid": 9.5} and view["config"] == {"latent_dim": 64}
    assert "filename=faces-v2.pt" in view["checkpoint_url"]
    assert "filename=faces-v2-samples.png" in view["sample_grid_url"]
    assert client.get(f"/v1/models/{old.id}", headers=tenant.headers).json["sample_grid_url"] is None
    assert client.get(f"/v1/models/{new.id}", headers=other.headers).status_code == 404


def test_zip_upload_is_stored_then_recorded(
    client: FlaskClient, tenant: Tenant, other: Tenant, session: Session, settings: Settings
) -> None:
    data = zip_of({"boots/a.png": png(10), "boots/b.png": png(20), "sandals/c.png": png((1, 2, 3), 12)})
    response = upload(client, tenant, data, name="footwear")
    assert response.status_code == 201, response.json
    body = response.json
    assert response.headers["Location"] == f"/v1/datasets/{body['id']}"
    assert (body["name"], body["format"], body["num_images"]) == ("footwear", "zip", 3)
    assert (body["channels"], body["image_size"], body["class_names"]) == (3, 12, ["boots", "sandals"])
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["size_bytes"] == len(data)
    row = session.get(Dataset, uuid.UUID(body["id"]))
    stored = settings.storage_dir / row.object_key
    assert row.object_key == f"tenants/{tenant.id}/datasets/{row.id}/data.zip" and stored.read_bytes() == data
    assert client.get(f"/v1/datasets/{body['id']}", headers=tenant.headers).json == body
    assert client.get("/v1/datasets", headers=tenant.headers).json["datasets"] == [body]
    assert client.get(f"/v1/datasets/{body['id']}", headers=other.headers).status_code == 404
    assert client.get("/v1/datasets", headers=other.headers).json["datasets"] == []


def test_npz_upload_named_after_the_file(client: FlaskClient, tenant: Tenant) -> None:
    data = npz_of(images=np.zeros((5, 28, 28), np.uint8), labels=np.array([0, 1, 0, 1, 2]))
    body = upload(client, tenant, data, "digits-small.npz").json
    assert (body["name"], body["format"], body["num_images"], body["class_names"]) == (
        "digits-small", "npz", 5, ["0", "1", "2"]
    )  # fmt: skip


def test_bad_uploads_leave_no_row_and_no_object(
    client: FlaskClient, tenant: Tenant, session: Session, settings: Settings
) -> None:
    cases = [
        (upload(client, tenant, b"not a zip at all"), 422, "file"),
        (upload(client, tenant, zip_of({"../evil.png": png(1)})), 422, "file"),
        (upload(client, tenant, zip_of({"a.png": b"\x89PNG broken"})), 422, "file"),
        (upload(client, tenant, zip_of({"notes.txt": b"hello"})), 422, "file"),
        (upload(client, tenant, npz_of(images=np.zeros((2, 4), np.float32)), "x.npz"), 422, "file"),
        (upload(client, tenant, zip_of({"a.png": png(1)}), name="x" * 201), 422, "name"),
        (
            client.post(
                "/v1/datasets", data={"name": "x"}, headers=tenant.headers, content_type="multipart/form-data"
            ),
            422,
            "file",
        ),
    ]
    for response, status, field in cases:
        assert response.status_code == status, response.json
        assert response.json["error"]["details"][0]["field"] == field
    assert session.scalar(select(func.count()).select_from(Dataset)) == 0
    assert not any(path.is_file() for path in settings.storage_dir.rglob("*"))


def test_upload_limits_and_content_type(client: FlaskClient, tenant: Tenant, settings: Settings) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (1, 300, 300), dtype=np.uint8)
    too_big = npz_of(images=noise)
    assert len(too_big) > settings.max_upload_bytes
    response = upload(client, tenant, too_big, "big.npz")
    assert response.status_code == 413 and response.json["error"]["code"] == "payload_too_large"
    wrong = client.post("/v1/datasets", json={"file": "x"}, headers=tenant.headers)
    assert wrong.status_code == 415 and wrong.json["error"]["code"] == "unsupported_media_type"


def test_signed_object_urls_download_the_upload(client: FlaskClient, tenant: Tenant, app) -> None:  # type: ignore[no-untyped-def]
    data = zip_of({"a.png": png(1)})
    body = upload(client, tenant, data).json
    with app.app_context():
        store = app.extensions["genq"].store
        url = store.download_url(f"tenants/{tenant.id}/datasets/{body['id']}/data.zip", "mine.zip")
    parts = urlsplit(url)
    response = client.get(f"{parts.path}?{parts.query}")  # no API key: the signature is the capability
    assert response.status_code == 200 and response.data == data
    assert "filename=mine.zip" in response.headers["Content-Disposition"]
    response.close()
