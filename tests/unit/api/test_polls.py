"""Cheap polls: cached key lookups that still honour revocation, reused download URLs, ETag and 304."""

from __future__ import annotations

import threading
import time
import uuid

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from api.app import create_app
from api.download_urls import DownloadUrls
from api.key_cache import KeyCache, KnownKey
from shared.models import Artifact, Job, JobStatus, utcnow
from shared.settings import Settings
from shared.specs import JobKind
from shared.tenants import revoke_api_key
from tests.unit.api.conftest import RecordingWake, Tenant, add_model
from tests.unit.api.test_batches import template_batch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _finished_job(session: Session, tenant_id: uuid.UUID) -> Job:
    job = Job(
        id=uuid.uuid4(), tenant_id=tenant_id, kind=JobKind.generate, queue="genq.sample",
        params={"model_id": str(uuid.uuid4()), "count": 1}, status=JobStatus.succeeded, attempts=1,
        created_at=utcnow(), updated_at=utcnow(), finished_at=utcnow(),
    )  # fmt: skip
    session.add(job)
    session.flush()
    for name in ("grid.png", "manifest.json"):
        session.add(
            Artifact(
                job_id=job.id, tenant_id=tenant_id, name=name, key=f"tenants/{tenant_id}/jobs/{job.id}/x",
                content_type="application/octet-stream", size=1, sha256="b" * 64,
            )
        )  # fmt: skip
    session.commit()
    return job


def test_key_cache_expires_entries_after_its_ttl_and_stays_bounded() -> None:
    clock = Clock()
    cache = KeyCache(ttl=5, max_entries=2, clock=clock)
    known = KnownKey(uuid.uuid4(), uuid.uuid4())
    cache.put("a", known)
    clock.now += 4.9
    assert cache.get("a") == known
    clock.now += 0.2
    assert cache.get("a") is None
    for name in ("a", "b", "c"):
        cache.put(name, known)
    assert cache.get("a") is None and cache.get("c") == known  # the oldest entry went first
    assert KeyCache(ttl=0).get("a") is None


def test_a_revoked_key_stops_working_within_the_cache_bound(
    app: Flask, client: FlaskClient, tenant: Tenant, session: Session
) -> None:
    clock = Clock()
    cache = app.extensions["genq"].keys
    cache.clock = clock
    assert cache.ttl == 5.0  # the default bound
    assert client.get("/v1/jobs", headers=tenant.headers).status_code == 200
    [key_id] = [known.id for _, known in cache._entries.values()]
    assert revoke_api_key(session, key_id)
    session.commit()
    clock.now += 4.0
    assert client.get("/v1/jobs", headers=tenant.headers).status_code == 200  # still within the bound
    clock.now += 1.0
    reply = client.get("/v1/jobs", headers=tenant.headers)
    assert reply.status_code == 401 and reply.json["error"]["code"] == "unauthorized"
    clock.now += 100.0
    assert client.get("/v1/jobs", headers=tenant.headers).status_code == 401  # never cached as live again


def test_download_urls_are_minted_once_per_epoch_of_half_their_life() -> None:
    class Signer:
        ttl = 100
        minted = 0

        def download_url(self, key: str, filename: str | None = None) -> str:
            self.minted += 1
            return f"{key}?{filename}&n={self.minted}"

    clock = Clock()
    signer = Signer()
    urls = DownloadUrls(signer, clock=clock)
    first = urls.download_url("k", "grid.png")
    clock.now += 49.9
    assert urls.download_url("k", "grid.png") == first and signer.minted == 1
    assert urls.download_url("k", "other.png") != first  # another filename is another URL
    clock.now += 0.2
    assert urls.download_url("k", "grid.png") != first and signer.minted == 3


def test_an_unchanged_job_answers_304_and_a_changed_one_200(
    client: FlaskClient, tenant: Tenant, session: Session
) -> None:
    job = _finished_job(session, tenant.id)
    first = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and len(first.json["artifacts"]) == 2 and etag.startswith('"')
    again = client.get(f"/v1/jobs/{job.id}", headers={**tenant.headers, "If-None-Match": etag})
    assert again.status_code == 304 and again.data == b"" and again.headers["ETag"] == etag
    assert client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).data == first.data  # URLs reused

    job.result = {"count": 1}
    session.commit()
    changed = client.get(f"/v1/jobs/{job.id}", headers={**tenant.headers, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag


def test_etags_reveal_nothing_across_tenants(
    client: FlaskClient, tenant: Tenant, other: Tenant, session: Session
) -> None:
    job = _finished_job(session, tenant.id)
    etag = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).headers["ETag"]
    reply = client.get(f"/v1/jobs/{job.id}", headers={**other.headers, "If-None-Match": etag})
    assert reply.status_code == 404 and "ETag" not in reply.headers


def test_batch_reads_are_conditional_too(client: FlaskClient, tenant: Tenant, session: Session) -> None:
    model = add_model(session, tenant.id)
    created = client.post("/v1/batches", json=template_batch(model.id, [1, 2]), headers=tenant.headers)
    url = f"/v1/batches/{created.json['id']}"
    etag = client.get(url, headers=tenant.headers).headers["ETag"]
    assert client.get(url, headers={**tenant.headers, "If-None-Match": etag}).status_code == 304
    assert client.post(f"{url}/cancel", headers=tenant.headers).status_code == 200
    assert client.get(url, headers={**tenant.headers, "If-None-Match": etag}).status_code == 200


def _set_status_later(
    session: Session, job_id: uuid.UUID, status: JobStatus, delay: float
) -> threading.Thread:
    def change() -> None:
        time.sleep(delay)
        session.execute(update(Job).where(Job.id == job_id).values(status=status, updated_at=utcnow()))
        session.commit()

    thread = threading.Thread(target=change)
    thread.start()
    return thread


def test_wait_returns_when_the_job_changes(client: FlaskClient, tenant: Tenant, session: Session) -> None:
    job = _finished_job(session, tenant.id)
    job.status = JobStatus.queued
    session.commit()
    etag = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).headers["ETag"]
    # No broker listens in unit tests: the waiter rechecks the row every second instead of being woken.
    changer = _set_status_later(session, job.id, JobStatus.running, delay=0.3)
    reply = client.get(f"/v1/jobs/{job.id}?wait=20", headers={**tenant.headers, "If-None-Match": etag})
    changer.join(timeout=10)
    assert reply.status_code == 200 and reply.json["status"] == "running"


def test_wait_with_a_current_etag_ends_in_304_and_a_stale_one_answers_at_once(
    client: FlaskClient, tenant: Tenant, session: Session
) -> None:
    job = _finished_job(session, tenant.id)
    job.status = JobStatus.queued
    session.commit()
    etag = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).headers["ETag"]
    same = client.get(f"/v1/jobs/{job.id}?wait=1", headers={**tenant.headers, "If-None-Match": etag})
    assert same.status_code == 304 and same.data == b""
    stale = client.get(f"/v1/jobs/{job.id}?wait=60", headers={**tenant.headers, "If-None-Match": '"old"'})
    assert stale.status_code == 200 and stale.headers["ETag"] == etag


def test_wait_on_a_finished_job_or_batch_answers_at_once_and_is_bounded(
    client: FlaskClient, tenant: Tenant, other: Tenant, session: Session
) -> None:
    job = _finished_job(session, tenant.id)
    assert client.get(f"/v1/jobs/{job.id}?wait=60", headers=tenant.headers).json["status"] == "succeeded"
    for bad in ("61", "-1", "soon"):
        reply = client.get(f"/v1/jobs/{job.id}?wait={bad}", headers=tenant.headers)
        assert reply.status_code == 400 and reply.json["error"]["details"][0]["field"] == "wait"
    assert client.get(f"/v1/jobs/{job.id}?wait=5", headers=other.headers).status_code == 404


def test_every_api_process_gives_an_unchanged_job_the_same_etag(
    app: Flask, settings: Settings, tenant: Tenant, session: Session, wakes: RecordingWake
) -> None:
    job = _finished_job(session, tenant.id)
    first = app.test_client().get(f"/v1/jobs/{job.id}", headers=tenant.headers)
    time.sleep(1.1)  # the other process signs its URLs a second later: other expiries, other signatures
    other = create_app(settings, wake=wakes).test_client()
    second = other.get(
        f"/v1/jobs/{job.id}", headers={**tenant.headers, "If-None-Match": first.headers["ETag"]}
    )
    assert second.status_code == 304
    urls = {a["url"] for a in first.json["artifacts"]}
    assert urls.isdisjoint(
        a["url"] for a in other.get(f"/v1/jobs/{job.id}", headers=tenant.headers).json["artifacts"]
    )
