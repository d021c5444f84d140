"""Request limits per API key, with Flask-Limiter, counted in the broker's Redis (every API process
shares the counts).

One budget per key across the whole of /v1 (Flask-Limiter's application limits), from settings
(`rate_limit`) or the tenant's own `rate_limit`. Past it: `429` with `Retry-After` and the usual error
body. If Redis does not answer, requests pass (errors are swallowed): the limit protects the service,
and refusing every request because its counter is away would be the outage it is meant to prevent.
"""

from __future__ import annotations

import time
import uuid

from flask import Flask, g, request
from flask_limiter import Limiter
from sqlalchemy import select

from api.context import db
from shared.models import Tenant
from shared.settings import Settings

TENANT_LIMIT_CACHE_SECONDS = 5.0  # a changed tenant limit takes effect within this long


class TenantLimits:
    """The tenant's own `rate_limit`, read from SQL at most every few seconds per process."""

    def __init__(self, default: str) -> None:
        self.default = default
        self._cache: dict[uuid.UUID, tuple[float, str]] = {}

    def for_tenant(self, tenant_id: uuid.UUID | None) -> str:
        if tenant_id is None:  # exempt requests (no key) are asked too
            return self.default
        now = time.monotonic()
        cached = self._cache.get(tenant_id)
        if cached is not None and now - cached[0] < TENANT_LIMIT_CACHE_SECONDS:
            return cached[1]
        own = db().scalar(select(Tenant.rate_limit).where(Tenant.id == tenant_id))
        limit = own or self.default
        self._cache[tenant_id] = (now, limit)
        return limit


def _unauthenticated() -> bool:
    return not request.path.startswith("/v1/") or getattr(g, "api_key_id", None) is None


def install_rate_limits(app: Flask, settings: Settings) -> Limiter:
    """Limit every authenticated /v1 request by its API key. Call after `install_auth`: the limiter's
    check must run after the key is known."""
    limits = TenantLimits(settings.rate_limit)
    return Limiter(
        key_func=lambda: f"key:{g.get('api_key_id')}",
        app=app,
        application_limits=[lambda: limits.for_tenant(g.get("tenant_id"))],
        application_limits_exempt_when=_unauthenticated,
        storage_uri=settings.rate_limit_storage_url or settings.broker_url,
        storage_options={"socket_timeout": 1, "socket_connect_timeout": 1},
        strategy="fixed-window",  # one Redis round trip per request
        headers_enabled=True,
        swallow_errors=True,
        key_prefix="genq:ratelimit",
    )
