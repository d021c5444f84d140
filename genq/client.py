"""An HTTP client for the genq API v1 (requests). Every failure becomes an `ApiError` with a code and a
message a person can act on: the API's own `{"error": {code, message, details}}`, or what went wrong on
the way (API unreachable, not JSON, a checksum mismatch on download)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import requests

DEFAULT_TIMEOUT = 30.0
UPLOAD_TIMEOUT = 900.0
TERMINAL = ("succeeded", "failed", "canceled")
LONG_POLL_SECONDS = 20  # each follow-up read waits in the API for a change, at most this long
# Errors worth waiting out while following a job: the API restarting, a slow moment under load.
TRANSIENT_CODES = ("unreachable", "timeout")
OUTAGE_GRACE_SECONDS = 60.0


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def __str__(self) -> str:
        where = f"HTTP {self.status} " if self.status else ""
        text = f"{where}{self.code}: {self.message}"
        if self.details:
            text += f" ({json.dumps(self.details, default=str)})"
        return text


class WaitTimeout(ApiError):
    """The job or batch had not ended when the wait's timeout ran out; `last` is its latest view."""

    def __init__(self, what: str, item_id: str, timeout: float, last: dict[str, Any]) -> None:
        super().__init__(0, "wait_timeout", f"{what} {item_id} not finished after {timeout:g}s")
        self.last = last


def batch_finished(batch: Mapping[str, Any]) -> int:
    counts = batch.get("counts") or {}
    return sum(int(counts.get(status) or 0) for status in TERMINAL)


def batch_ended(batch: Mapping[str, Any]) -> bool:
    total = int(batch.get("total") or 0)
    return bool(total) and batch_finished(batch) >= total


# When a followed job or batch has ended.
ENDED: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "job": lambda job: job.get("status") in TERMINAL,
    "batch": batch_ended,
}


RATE_LIMIT_RETRIES = 3
RATE_LIMIT_MAX_PAUSE_SECONDS = 30.0


def _rate_limited_for(response: requests.Response) -> float | None:
    """Seconds to wait when the API refused the request for the key's rate limit; None otherwise."""
    if response.status_code != 429:
        return None
    try:
        if response.json()["error"]["code"] != "rate_limited":
            return None
        return min(RATE_LIMIT_MAX_PAUSE_SECONDS, max(0.1, float(response.headers.get("Retry-After", 1))))
    except (ValueError, KeyError, TypeError):
        return None


def _error_from_response(response: requests.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return ApiError(
            response.status_code,
            str(error.get("code", "error")),
            str(error.get("message", response.reason)),
            error.get("details"),
        )
    snippet = response.text.strip().replace("\n", " ")[:200]
    return ApiError(response.status_code, "http_error", snippet or str(response.reason))


class GenqClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.http = session or requests.Session()

    # -- plumbing --------------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> Any:
        """One API call; the decoded JSON body, or ApiError."""
        headers = dict(kwargs.pop("headers", None) or {})
        if auth:
            if not self.api_key:
                raise ApiError(
                    0,
                    "no_api_key",
                    "no API key: pass --api-key, set GENQ_API_KEY, or start `genq up` (it saves one)",
                )
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}{path}"
        timeout = kwargs.pop("timeout", self.timeout)
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                response = self.http.request(method, url, headers=headers, timeout=timeout, **kwargs)
            except requests.ConnectionError as exc:
                raise ApiError(
                    0, "unreachable", f"cannot reach the genq API at {self.base_url} (is it running?)"
                ) from exc
            except requests.Timeout as exc:
                raise ApiError(0, "timeout", f"{method} {url} took longer than {timeout:g}s") from exc
            # Over the key's request rate: wait as told and ask again (a quota's 429 is the caller's).
            pause = _rate_limited_for(response)
            if pause is None or attempt == RATE_LIMIT_RETRIES:
                break
            time.sleep(pause)
        if response.status_code >= 400:
            raise _error_from_response(response)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(response.status_code, "bad_response", f"{method} {path}: not JSON") from exc

    # -- health ----------------------------------------------------------------------------------------

    def ready(self) -> dict[str, Any]:
        return self.request("GET", "/readyz", auth=False)

    def usage(self) -> dict[str, Any]:
        """Queued and running jobs, worker seconds used today, the tenant's limits."""
        return self.request("GET", "/v1/usage")

    # -- jobs and batches ------------------------------------------------------------------------------

    def submit_job(
        self, kind: str, params: dict[str, Any], priority: int = 0, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"kind": kind, "params": params, "priority": priority}
        return self.request("POST", "/v1/jobs", json=body, headers=headers)

    def submit_batch(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.request("POST", "/v1/batches", json=body, headers=headers)

    def get_job(self, job_id: str, wait: int = 0) -> dict[str, Any]:
        """The job; with `wait`, the API answers when the job changes or after that many seconds."""
        return self.request("GET", f"/v1/jobs/{job_id}", **self._waiting(wait))

    def get_batch(self, batch_id: str, wait: int = 0) -> dict[str, Any]:
        """The batch; with `wait`, the API answers when any of its jobs changes or after `wait` s."""
        return self.request("GET", f"/v1/batches/{batch_id}", **self._waiting(wait))

    def _waiting(self, wait: int) -> dict[str, Any]:
        return {"params": {"wait": wait}, "timeout": self.timeout + wait} if wait > 0 else {}

    def get_job_or_batch(self, item_id: str) -> tuple[Literal["job", "batch"], dict[str, Any]]:
        """("job", body) or ("batch", body): `genq status ID` takes either."""
        try:
            return "job", self.get_job(item_id)
        except ApiError as exc:
            if exc.status not in (404, 400):
                raise
            try:
                return "batch", self.get_batch(item_id)
            except ApiError as batch_exc:
                if batch_exc.status in (404, 400):
                    raise ApiError(404, "not_found", f"no job or batch {item_id}") from batch_exc
                raise

    def list_jobs(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self.request("GET", "/v1/jobs", params=params)

    def iter_jobs(self, page_size: int = 200, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching job, newest first, following the cursor."""
        cursor = None
        while True:
            page = self.list_jobs(limit=page_size, cursor=cursor, **filters)
            yield from page.get("jobs", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel")

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/batches/{batch_id}/cancel")

    # -- following jobs and batches to their end ---------------------------------------------------------

    def follow(
        self, what: Literal["job", "batch"], item_id: str, timeout: float | None = None, interval: float = 1.0
    ) -> Iterator[dict[str, Any]]:
        """The job's or batch's view now and at each change, the last one once it has ended (a job
        succeeded, failed or was canceled; a batch once every job of it has). WaitTimeout after
        `timeout` seconds."""
        read = self.get_job if what == "job" else self.get_batch
        deadline = time.monotonic() + timeout if timeout else None
        wait = 0  # the first read answers at once; the next ones wait in the API for a change
        while True:
            asked = time.monotonic()
            view = self._riding_out_outages(lambda wait=wait: read(item_id, wait=wait), deadline)
            yield view
            if ENDED[what](view):
                return
            if deadline and time.monotonic() > deadline:
                raise WaitTimeout(what, item_id, timeout or 0, view)
            # `interval` bounds how often the API is asked (one without long polls answers at once).
            time.sleep(max(0.0, interval - (time.monotonic() - asked)))
            wait = (
                LONG_POLL_SECONDS
                if deadline is None
                else max(0, min(LONG_POLL_SECONDS, int(deadline - time.monotonic())))
            )

    def wait(
        self,
        what: Literal["job", "batch"],
        item_id: str,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        interval: float = 1.0,
    ) -> dict[str, Any]:
        """The view once it has ended; `on_update(view)` sees every change on the way (as `follow`).
        `wait_job(job_id, ...)` and `wait_batch(batch_id, ...)` are this with `what` named."""
        for view in self.follow(what, item_id, timeout, interval):
            if on_update is not None:
                on_update(view)
        return view

    wait_job = functools.partialmethod(wait, "job")
    wait_batch = functools.partialmethod(wait, "batch")

    def batch_results(self, batch_id: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Each job of the batch, as a full view with fresh download URLs, as soon as it has ended (in
        the order they end); returns when every job has."""
        seen: set[str] = set()
        for _batch in self.follow("batch", batch_id, timeout):
            for listed in self.iter_jobs(batch=batch_id, status=",".join(TERMINAL)):
                if listed["id"] not in seen:
                    seen.add(listed["id"])
                    yield self.get_job(str(listed["id"]))

    @staticmethod
    def _riding_out_outages(fetch: Callable[[], dict[str, Any]], deadline: float | None) -> dict[str, Any]:
        """fetch(), waiting out an API that restarts or is briefly overloaded (OUTAGE_GRACE_SECONDS)."""
        first_failure = None
        while True:
            try:
                return fetch()
            except ApiError as exc:
                transient = exc.code in TRANSIENT_CODES or exc.status >= 500
                now = time.monotonic()
                first_failure = first_failure or now
                if (
                    not transient
                    or now - first_failure > OUTAGE_GRACE_SECONDS
                    or (deadline and now > deadline)
                ):
                    raise
                time.sleep(1.0)

    # -- models and datasets ---------------------------------------------------------------------------

    def list_models(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self.request("GET", "/v1/models", params=params)

    def get_model(self, model_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/models/{model_id}")

    def list_datasets(self) -> dict[str, Any]:
        return self.request("GET", "/v1/datasets")

    def upload_dataset(self, path: Path, name: str | None = None) -> dict[str, Any]:
        data = {"name": name} if name else {}
        with path.open("rb") as handle:
            return self.request(
                "POST", "/v1/datasets", files={"file": (path.name, handle)}, data=data, timeout=UPLOAD_TIMEOUT
            )

    # -- downloads -------------------------------------------------------------------------------------

    def download(self, url: str, target: Path, sha256: str | None = None) -> Path:
        """Stream a download URL (presigned S3 or signed local) to `target`, verifying its sha256.

        The URL carries its own signature: no Authorization header is sent (S3 rejects a second one).
        The file appears only complete and verified (written beside it, then renamed)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        digest = hashlib.sha256()
        try:
            with self.http.get(url, stream=True, timeout=self.timeout) as response:
                if response.status_code >= 400:
                    raise _error_from_response(response)
                with partial.open("wb") as out:
                    for chunk in response.iter_content(chunk_size=1024 * 1024):
                        digest.update(chunk)
                        out.write(chunk)
        except requests.RequestException as exc:
            partial.unlink(missing_ok=True)
            raise ApiError(0, "download_failed", f"download of {target.name} failed: {exc}") from exc
        except ApiError:
            partial.unlink(missing_ok=True)
            raise
        if sha256 and digest.hexdigest() != sha256.lower():
            partial.unlink(missing_ok=True)
            raise ApiError(
                0,
                "checksum_mismatch",
                f"{target.name}: sha256 {digest.hexdigest()} does not match the recorded {sha256}",
            )
        os.replace(partial, target)
        return target
