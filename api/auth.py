"""Bearer-key authentication for everything under /v1, except the OpenAPI document and signed downloads
(a signed object URL is itself the capability)."""

from __future__ import annotations

import uuid

from flask import Flask, g, request

from api.context import api, db
from api.errors import ApiError
from api.key_cache import KnownKey
from shared.tenants import KEY_PREFIX, hash_key, live_key

PUBLIC_ENDPOINTS = {"openapi.spec", "objects.download"}


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="genq"'})


def install_auth(app: Flask) -> None:
    @app.before_request
    def _authenticate() -> None:
        # No endpoint: the route does not exist or the method is wrong; let that 404/405 through.
        if not request.path.startswith("/v1/") or request.endpoint in (None, *PUBLIC_ENDPOINTS):
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("send an API key as 'Authorization: Bearer <key>'")
        known = _known_key(token.strip())
        if known is None:
            raise _unauthorized("invalid or revoked API key")
        g.tenant_id = known.tenant_id
        g.api_key_id = known.id


def _known_key(plaintext: str) -> KnownKey | None:
    """The live key, from this process's cache when it was looked up within the last few seconds."""
    if not plaintext.startswith(KEY_PREFIX) or len(plaintext) > 200:
        return None
    cache = api().keys
    key_hash = hash_key(plaintext)
    known = cache.get(key_hash)
    if known is not None:
        return known
    session = db()
    key = live_key(session, key_hash)
    session.commit()  # end the lookup's transaction: nothing stays open while a body streams in
    if key is None:
        return None
    known = KnownKey(id=key.id, tenant_id=key.tenant_id)
    cache.put(key_hash, known)
    return known


def tenant_id() -> uuid.UUID:
    """The tenant of the authenticated request."""
    return g.tenant_id
