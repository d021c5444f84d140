"""The dashboard in a real browser: Debian's chromium driven by Playwright, against gunicorn, a real worker,
Postgres, Redis and moto's S3. Signs in with an API key, watches a job submitted through the HTTP API
move, cancels another from its page, downloads an artifact, and takes a screenshot of each page it
checks (a PNG the browser could render).

The screenshots go to the test's temporary directory, so a run leaves the tree as it was. To renew the
ones the README shows (docs/dashboard-*.png), run it with GENQ_UPDATE_SCREENSHOTS=1:

    GENQ_UPDATE_SCREENSHOTS=1 .venv/bin/pytest tests/integration/test_dashboard_browser.py
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy.orm import Session

from shared.db import session_factory
from shared.settings import Settings
from tests.conftest import ROOT
from tests.integration.api_server import ApiServer, running_api
from tests.integration.conftest import Workers
from tests.unit.api.conftest import Tenant, make_tenant

pytestmark = [pytest.mark.integration, pytest.mark.timeout(360)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS = ROOT / "docs"
UPDATE_SCREENSHOTS = os.environ.get("GENQ_UPDATE_SCREENSHOTS") == "1"
# A time budget ends training (then evaluation, the model and its pictures): the bar follows the clock.
WATCHED = {
    "family": "cnn", "dataset": "digits", "max_seconds": 30, "options": {"max_steps": 1_000_000, "width": 8},
}  # fmt: skip
QUEUED_BEHIND = {"family": "cnn", "dataset": "digits", "options": {"max_steps": 50, "width": 8}}
WAIT = 120.0

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
if not Path(CHROMIUM).exists():  # pragma: no cover - .ci/run installs it
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture()
def session(worker_settings: Settings) -> Iterator[Session]:
    with session_factory(worker_settings.sql_url)() as session:
        yield session


@pytest.fixture()
def server(worker_env: dict[str, str], tmp_path: Path) -> Iterator[ApiServer]:
    with running_api(worker_env, tmp_path / "api", processes=1) as api:
        yield api


@pytest.fixture()
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield chromium
        chromium.close()


def submit(server: ApiServer, tenant: Tenant, params: dict[str, Any]) -> str:
    body = {"kind": "train", "params": params}
    response = requests.post(f"{server.url}/v1/jobs", json=body, headers=tenant.headers, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def read(server: ApiServer, tenant: Tenant, job_id: str) -> dict[str, Any]:
    response = requests.get(f"{server.url}/v1/jobs/{job_id}", headers=tenant.headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def screenshot(page: Any, directory: Path, name: str, full_page: bool = False) -> None:
    """Save the page as `directory/name`; the image is a real, non-trivial PNG."""
    directory.mkdir(parents=True, exist_ok=True)
    image = page.screenshot(path=str(directory / name), full_page=full_page)
    assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 10_000, name


def sign_in(context: Any, server: ApiServer, key: str) -> Any:
    page = context.new_page()
    page.goto(f"{server.url}/")
    assert page.url.startswith(f"{server.url}/signin")
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/jobs")
    assert key not in page.url and key not in page.content()  # the key went into the cookie exchange only
    return page


def test_dashboard_in_chromium(
    server: ApiServer, session: Session, worker_env: dict[str, str], browser: Any, tmp_path: Path
) -> None:
    tenant = make_tenant(session, f"dashboard-{uuid.uuid4().hex[:8]}")
    other = make_tenant(session, f"dashboard-other-{uuid.uuid4().hex[:8]}")
    workers = Workers(worker_env, tmp_path / "worker-logs")
    screenshots = DOCS if UPDATE_SCREENSHOTS else tmp_path / "screenshots"
    try:
        workers.start()
        context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 860})
        page = sign_in(context, server, tenant.key)
        cookie = next(c for c in context.cookies() if c["name"] == "genq_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        watched = submit(server, tenant, WATCHED)
        # A batch queued behind it (one worker, one job at a time): its first job is next in line.
        body = {"items": [{"kind": "train", "params": QUEUED_BEHIND}] * 2}
        batch = requests.post(f"{server.url}/v1/batches", json=body, headers=tenant.headers, timeout=30)
        assert batch.status_code == 202, batch.text
        behind = batch.json()["job_ids"][0]

        # The jobs page updates itself: the watched job's bar moves without a reload.
        bar = page.locator(f'tr[data-job="{watched}"] progress')
        seen: set[float] = set()
        api_progress: list[Any] = []
        deadline = time.monotonic() + WAIT
        while len({v for v in seen if 0 < v < 100}) < 2:
            assert time.monotonic() < deadline, f"bar values seen: {sorted(seen)}; API said {api_progress}"
            if bar.count():
                seen.add(float(bar.get_attribute("value") or 0))
            job = read(server, tenant, watched)
            api_progress.append(
                (job["status"], (job["progress"] or {}).get("phase"), (job["progress"] or {}).get("percent"))
            )
            page.wait_for_timeout(300)
        assert page.locator(f'tr[data-batch="{batch.json()["id"]}"]').count() == 1
        queued_row = page.locator(f'tr[data-job="{behind}"]')
        assert queued_row.get_attribute("data-status") == "queued"
        assert "next" in queued_row.inner_text()  # its queue position
        screenshot(page, screenshots, "dashboard-jobs.png")

        # Cancel the queued job from its page (a form with the session's CSRF token).
        page.goto(f"{server.url}/jobs/{behind}")
        page.click("#cancel")
        page.wait_for_url(f"{server.url}/jobs/{behind}")
        assert page.locator("#job-status").inner_text() == "canceled"
        assert read(server, tenant, behind)["status"] == "canceled"
        forged = context.request.post(f"{server.url}/jobs/{watched}/cancel", form={"csrf_token": "forged"})
        assert forged.status == 400  # the cookie alone does not cancel anything

        # The watched job's page: it reloads itself when the job finishes, then shows its pictures.
        page.goto(f"{server.url}/jobs/{watched}")
        page.locator("#job-status", has_text="succeeded").wait_for(timeout=WAIT * 1000)
        page.wait_for_load_state("networkidle")
        for name in ("grid.png", "loss_curve.png"):
            image = page.locator(f'img[alt="{name}"]')
            assert image.evaluate("img => img.complete && img.naturalWidth > 0"), name
        screenshot(page, screenshots, "dashboard-job.png", full_page=True)

        # Download an artifact through its link: the bytes are the ones the API lists.
        artifacts = {a["name"]: a for a in read(server, tenant, watched)["artifacts"]}
        with page.expect_download() as download_info:
            page.click('a.download[data-name="grid.png"]')
        downloaded = Path(download_info.value.path()).read_bytes()
        assert hashlib.sha256(downloaded).hexdigest() == artifacts["grid.png"]["sha256"]

        page.goto(f"{server.url}/models")
        model = page.locator("article.model").first
        assert model.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
        assert "test_accuracy" in model.inner_text()
        screenshot(page, screenshots, "dashboard-models.png", full_page=True)

        # Another tenant's session sees none of it.
        stranger = sign_in(browser.new_context(), server, other.key)
        assert watched[:8] not in stranger.content()
        response = stranger.goto(f"{server.url}/jobs/{watched}")
        assert response is not None and response.status == 404
        context.close()
    finally:
        workers.stop_all()
