"""Tenants and API keys: keys are shown once, stored as hashes, and stop working when revoked."""

from __future__ import annotations

import hashlib
import re
import uuid

import pytest
from sqlalchemy.orm import Session

from shared.models import ApiKey
from shared.tenants import (
    TenantError,
    authenticate,
    create_api_key,
    create_tenant,
    find_tenant,
    list_api_keys,
    list_tenants,
    revoke_api_key,
)


def test_key_format_and_only_its_hash_is_stored(session: Session) -> None:
    tenant = create_tenant(session, "acme")
    key, plaintext = create_api_key(session, tenant.id, "ci", admin=True)
    session.commit()
    assert re.fullmatch(r"gq_[0-9a-f]{8}_[A-Za-z0-9_-]{32,}", plaintext)
    assert plaintext.split("_")[1] == key.prefix
    stored = session.get(ApiKey, key.id)
    assert stored.key_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in (stored.key_hash, stored.prefix, stored.name)
    assert stored.is_admin


def test_authenticate_accepts_the_key_and_nothing_else(session: Session) -> None:
    tenant = create_tenant(session, "acme")
    key, plaintext = create_api_key(session, tenant.id)
    _, other = create_api_key(session, tenant.id)
    session.commit()
    assert authenticate(session, plaintext).id == key.id
    assert authenticate(session, other).id != key.id
    for wrong in (plaintext[:-1], plaintext + "x", "", "Bearer " + plaintext, key.prefix, "gq_" + "a" * 500):
        assert authenticate(session, wrong) is None


def test_revoked_keys_fail_and_revoke_is_idempotent(session: Session) -> None:
    tenant = create_tenant(session, "acme")
    key, plaintext = create_api_key(session, tenant.id)
    session.commit()
    assert revoke_api_key(session, key.id) is True
    session.commit()
    assert authenticate(session, plaintext) is None
    assert revoke_api_key(session, key.id) is False


def test_tenant_names_are_unique_and_listed(session: Session) -> None:
    first = create_tenant(session, "acme")
    create_tenant(session, "zeta")
    with pytest.raises(TenantError, match="already exists"):
        create_tenant(session, "acme")
    with pytest.raises(TenantError):
        create_tenant(session, "  ")
    with pytest.raises(TenantError, match="no tenant"):
        create_api_key(session, uuid.uuid4())
    assert [t.name for t in list_tenants(session)] == ["acme", "zeta"]
    assert find_tenant(session, "acme").id == first.id
    assert find_tenant(session, str(first.id)).id == first.id
    assert find_tenant(session, "nobody") is None
    create_api_key(session, first.id, "one")
    assert [k.name for k in list_api_keys(session, first.id)] == ["one"]
