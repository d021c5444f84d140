"""Dashboard sign-in: an API key, typed once into a form, exchanged for a session cookie.

The key itself is never stored in the cookie, in a URL or in the page; the cookie (Flask's signed session)
holds the key's id and its tenant, is HttpOnly (no script reads it) and SameSite=Strict (no other site's
page sends it), and every request checks that the key is still live, so revoking a key signs its
dashboard sessions out. Forms that change something (sign-in, sign-out, cancel) carry a CSRF token tied
to the session (Flask-WTF's), as a second line behind SameSite.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, g, redirect, request, session, url_for
from flask_wtf.csrf import generate_csrf, validate_csrf
from sqlalchemy import select
from werkzeug.wrappers import Response as WerkzeugResponse
from wtforms import ValidationError

from api.context import db
from shared.logging import bind_log_context
from shared.models import ApiKey
from shared.settings import Settings
from shared.tenants import authenticate

SESSION_HOURS = 12
View = TypeVar("View", bound=Callable[..., Any])


def configure_sessions(app: Flask, settings: Settings) -> None:
    """Cookie settings, and a session secret derived from the signing secret (its own purpose label, so a
    session signature is never a valid download signature or the other way round)."""
    secret = hmac.new(settings.signing_secret.encode(), b"genq dashboard session", hashlib.sha256).digest()
    app.secret_key = secret
    app.config.update(
        SESSION_COOKIE_NAME="genq_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.public_base_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=SESSION_HOURS),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session it is tied to
    )


def csrf_token() -> str:
    return generate_csrf()


def csrf_valid() -> bool:
    try:
        validate_csrf(request.form.get("csrf_token", ""))
    except ValidationError:
        return False
    return True


def sign_in(plaintext: str) -> bool:
    """Start a session for a live key; False (and no session) for anything else."""
    database = db()
    key = authenticate(database, plaintext.strip())
    database.commit()
    if key is None:
        return False
    session.clear()  # a fresh session: nothing from before sign-in (the CSRF token included) carries over
    session.permanent = True
    session["key_id"] = str(key.id)
    session["tenant_id"] = str(key.tenant_id)
    return True


def sign_out() -> None:
    session.clear()


def signed_in_tenant() -> uuid.UUID | None:
    """The session's tenant while its key is live; a revoked key ends the session."""
    key_id, tenant_id = session.get("key_id"), session.get("tenant_id")
    if not key_id or not tenant_id:
        return None
    try:
        key_uuid, tenant_uuid = uuid.UUID(key_id), uuid.UUID(tenant_id)
    except ValueError:
        session.clear()
        return None
    live = select(ApiKey.id).where(
        ApiKey.id == key_uuid, ApiKey.tenant_id == tenant_uuid, ApiKey.revoked_at.is_(None)
    )
    if db().scalar(live) is None:
        session.clear()
        return None
    return tenant_uuid


def signin_required(view: View) -> View:
    """Pages behind sign-in: the tenant lands in g.tenant_id, where api.auth.tenant_id() reads it, so the
    dashboard runs the same tenant-scoped queries as the JSON API."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        tenant = signed_in_tenant()
        if tenant is None:
            return redirect(url_for("dashboard.signin", next=request.path))
        g.tenant_id = tenant
        bind_log_context(tenant_id=tenant)
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def safe_next(target: str | None) -> str:
    """Only a path on this site (never `//other.site` or a full URL) is followed after sign-in."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("dashboard.jobs")


def redirect_to(target: str) -> WerkzeugResponse:
    return redirect(target, code=303)
