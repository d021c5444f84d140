"""/metrics (operator token only; SQL gauges equal to the rows), request ids, JSON log lines, and the
dashboard's sign-in, CSRF and tenant isolation, on the SQLite app."""

from __future__ import annotations

import json
import logging
import re
import uuid

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.app import create_app
from shared.logging import bound_log_context, configure_logging
from shared.models import ApiKey, Batch, Job, JobStatus, utcnow
from shared.settings import Settings
from shared.specs import JobKind
from shared.tenants import revoke_api_key
from tests.conftest import ROOT
from tests.unit.api.conftest import RecordingWake, Tenant

TOKEN = "operator-token-" + "0" * 16


@pytest.fixture()
def app(settings: Settings, session: Session, wakes: RecordingWake) -> Flask:
    return create_app(settings.model_copy(update={"metrics_token": TOKEN}), wake=wakes)


def add_job(session: Session, tenant: Tenant, status: JobStatus, queue: str = "genq.train") -> Job:
    now = utcnow()
    job = Job(
        id=uuid.uuid4(), tenant_id=tenant.id, kind=JobKind.train, params={}, status=status, queue=queue,
        priority=0, attempts=0, created_at=now, updated_at=now,
    )  # fmt: skip
    session.add(job)
    session.commit()
    return job


def scrape(client: FlaskClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_are_for_the_operator_token_only(
    client: FlaskClient, tenant: Tenant, settings: Settings, session: Session
) -> None:
    assert client.get("/metrics").status_code == 401
    refused = client.get("/metrics", headers=tenant.headers)
    assert refused.status_code == 403 and "genq_jobs" not in refused.text
    assert client.get("/metrics", headers={"Authorization": "Bearer " + TOKEN[:-1] + "1"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    without = create_app(settings, wake=RecordingWake()).test_client()
    assert without.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_sql_gauges_equal_the_rows(
    client: FlaskClient, session: Session, tenant: Tenant, other: Tenant
) -> None:
    for status in (JobStatus.queued, JobStatus.queued, JobStatus.running, JobStatus.succeeded):
        add_job(session, tenant, status)
    add_job(session, other, JobStatus.queued, queue="genq.sample")
    samples = scrape(client)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    assert value("genq_jobs", queue="genq.train", status="queued") == 2
    assert value("genq_jobs", queue="genq.train", status="running") == 1
    assert value("genq_jobs", queue="genq.train", status="succeeded") == 1
    assert value("genq_jobs", queue="genq.train", status="failed") == 0
    assert value("genq_jobs_queued", queue="genq.train") == 2
    assert value("genq_jobs_queued", queue="genq.sample") == 1
    assert value("genq_tenant_jobs_queued", tenant_id=str(tenant.id), tenant="alice") == 2
    assert value("genq_tenant_jobs_queued", tenant_id=str(other.id), tenant="bob") == 1
    assert (value("genq_oldest_queued_job_age_seconds", queue="genq.train") or -1) >= 0
    assert value("genq_metrics_sql_up") == 1

    # The KEDA example scales on series this endpoint serves.
    scaled = yaml.safe_load((ROOT / "deploy" / "keda-scaledobject.yaml").read_text())
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    served = {name for name, _ in samples}
    assert set(re.findall(r"genq_[a-z_]+", query)) <= served


def test_http_requests_are_counted_by_route_template(
    client: FlaskClient, session: Session, tenant: Tenant
) -> None:
    job = add_job(session, tenant, JobStatus.queued)
    route = frozenset({"method": "GET", "route": "/v1/jobs/<job_id>", "status": "200"}.items())
    before = scrape(client).get(("genq_http_requests_total", route), 0.0)
    for _ in range(3):
        assert client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).status_code == 200
    samples = scrape(client)
    assert samples[("genq_http_requests_total", route)] == before + 3
    assert not any(str(job.id) in dict(labels).get("route", "") for _, labels in samples)


def test_request_id_is_honoured_or_made(client: FlaskClient, tenant: Tenant) -> None:
    given = client.get("/v1/jobs", headers={**tenant.headers, "X-Request-ID": "edge-42.a"})
    assert given.headers["X-Request-ID"] == "edge-42.a"
    for header in ({}, {"X-Request-ID": "bad id with spaces"}, {"X-Request-ID": "x" * 200}):
        made = client.get("/healthz", headers=header).headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)


def test_log_lines_are_json_with_the_bound_ids(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        configure_logging("json")
        configure_logging("json")  # idempotent: one line per record, not two
        with bound_log_context(job_id="j-1", tenant_id=uuid.UUID(int=7), attempt=2, request_id=None):
            logging.getLogger("genq.test").info("hello %s", "there")
        logging.getLogger("genq.test").info("unbound")
    finally:
        root.handlers[:], root.level = before[0], before[1]
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert len(lines) == 2
    assert lines[0]["message"] == "hello there" and lines[0]["job_id"] == "j-1" and lines[0]["attempt"] == "2"
    assert lines[0]["tenant_id"] == str(uuid.UUID(int=7)) and "request_id" not in lines[0]
    assert "job_id" not in lines[1]


# ---------------------------------------------------------------------------------------------------
# Dashboard


def csrf(client: FlaskClient, path: str) -> str:
    page = client.get(path)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match.group(1)


def sign_in(client: FlaskClient, key: str) -> None:
    response = client.post("/signin", data={"api_key": key, "csrf_token": csrf(client, "/signin")})
    assert response.status_code == 303 and response.headers["Location"] == "/jobs", response.text[:300]


def test_sign_in_exchanges_the_key_for_a_strict_httponly_cookie(client: FlaskClient, tenant: Tenant) -> None:
    assert client.get("/jobs").headers["Location"].startswith("/signin")
    token = csrf(client, "/signin")
    assert client.post("/signin", data={"api_key": tenant.key}).status_code == 400  # no CSRF token
    wrong = client.post("/signin", data={"api_key": "genq_nope", "csrf_token": token})
    assert wrong.status_code == 401 and "unknown or revoked" in wrong.text
    response = client.post("/signin", data={"api_key": tenant.key, "csrf_token": token})
    assert response.status_code == 303
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and tenant.key not in cookie
    assert tenant.key not in response.headers["Location"]
    page = client.get("/jobs")
    assert page.status_code == 200 and tenant.key not in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_dashboard_shows_only_the_tenants_jobs_and_cancels_with_csrf(
    client: FlaskClient, session: Session, tenant: Tenant, other: Tenant
) -> None:
    mine = add_job(session, tenant, JobStatus.queued)
    theirs = add_job(session, other, JobStatus.queued)
    sign_in(client, tenant.key)
    jobs = client.get("/jobs/live").text
    assert str(mine.id) in jobs and str(theirs.id) not in jobs
    assert client.get(f"/jobs/{theirs.id}").status_code == 404
    page = client.get(f"/jobs/{mine.id}")
    assert page.status_code == 200 and "Cancel job" in page.text

    assert client.post(f"/jobs/{mine.id}/cancel").status_code == 400  # the cookie alone is not enough
    token = csrf(client, f"/jobs/{mine.id}")
    assert client.post(f"/jobs/{theirs.id}/cancel", data={"csrf_token": token}).status_code == 404
    response = client.post(f"/jobs/{mine.id}/cancel", data={"csrf_token": token})
    assert response.status_code == 303
    session.expire_all()
    assert session.get(Job, mine.id).status == JobStatus.canceled  # type: ignore[union-attr]
    assert session.get(Job, theirs.id).status == JobStatus.queued  # type: ignore[union-attr]


def test_revoking_the_key_ends_its_dashboard_session(
    client: FlaskClient, session: Session, tenant: Tenant
) -> None:
    sign_in(client, tenant.key)
    assert client.get("/models").status_code == 200
    key_id = session.scalar(select(ApiKey.id).where(ApiKey.tenant_id == tenant.id))
    assert key_id is not None
    revoke_api_key(session, key_id)
    session.commit()
    assert client.get("/models").headers["Location"].startswith("/signin")


def test_a_batchs_jobs_on_their_own(client: FlaskClient, session: Session, tenant: Tenant) -> None:
    batch = Batch(id=uuid.uuid4(), tenant_id=tenant.id, total=1, created_at=utcnow())
    session.add(batch)
    session.commit()
    inside = add_job(session, tenant, JobStatus.queued)
    inside.batch_id = batch.id
    session.commit()
    outside = add_job(session, tenant, JobStatus.queued)
    sign_in(client, tenant.key)
    everything = client.get("/jobs").text
    assert str(batch.id)[:8] in everything and str(outside.id) in everything
    page = client.get(f"/jobs?batch={batch.id}")
    assert str(inside.id) in page.text and str(outside.id) not in page.text
    assert f"/jobs/live?batch={batch.id}" in page.text  # the live part keeps the filter
    assert client.get("/jobs?batch=nope").status_code == 400
