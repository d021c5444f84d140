"""Tenants and their API keys. A key is shown once, at creation; only its sha256 is stored.

Key format: `gq_<8-char prefix>_<43 random urlsafe chars>`. The prefix is stored too, so a key can be
recognised in a listing without revealing it.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.models import ApiKey, Tenant, utcnow

KEY_PREFIX = "gq_"


class TenantError(ValueError):
    """A tenant or key operation was refused; the message says why."""


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def create_tenant(session: Session, name: str) -> Tenant:
    """Add a tenant (flushed, not committed). Names are unique."""
    name = name.strip()
    if not name or len(name) > 200:
        raise TenantError("tenant name must be 1 to 200 characters")
    if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise TenantError(f"tenant {name!r} already exists")
    tenant = Tenant(id=uuid.uuid4(), name=name, created_at=utcnow())
    session.add(tenant)
    session.flush()
    return tenant


def create_api_key(
    session: Session, tenant_id: uuid.UUID, name: str = "", admin: bool = False
) -> tuple[ApiKey, str]:
    """A new key for a tenant: the row (flushed, not committed) and the plaintext, which is never stored."""
    if session.get(Tenant, tenant_id) is None:
        raise TenantError(f"no tenant {tenant_id}")
    prefix = secrets.token_hex(4)  # 8 characters
    plaintext = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        key_hash=hash_key(plaintext),
        prefix=prefix,
        name=name,
        is_admin=admin,
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return key, plaintext


def authenticate(session: Session, plaintext: str) -> ApiKey | None:
    """The live key matching `plaintext`, or None.

    Looking the key up by its hash is the constant-time comparison: the secret itself is never compared
    byte by byte, and the lookup's timing depends only on the hash, which reveals nothing about the key.
    """
    if not plaintext.startswith(KEY_PREFIX) or len(plaintext) > 200:
        return None
    return live_key(session, hash_key(plaintext))


def live_key(session: Session, key_hash: str) -> ApiKey | None:
    """The unrevoked key with this sha256, or None (for callers that hashed the key already)."""
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
    if key is None or key.revoked_at is not None:
        return None
    return key


def revoke_api_key(session: Session, key_id: uuid.UUID) -> bool:
    """Revoke a key; True if it was live. Idempotent."""
    result = session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return result.rowcount > 0


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.name)))


def list_api_keys(session: Session, tenant_id: uuid.UUID) -> list[ApiKey]:
    """A tenant's keys, oldest first (hashes and prefixes only)."""
    query = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
    return list(session.scalars(query))


def find_tenant(session: Session, name_or_id: str) -> Tenant | None:
    """A tenant by name or by id."""
    try:
        tenant = session.get(Tenant, uuid.UUID(name_or_id))
        if tenant is not None:
            return tenant
    except ValueError:
        pass
    return session.scalar(select(Tenant).where(Tenant.name == name_or_id))
