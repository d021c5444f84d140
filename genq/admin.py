"""Admin commands that talk to the database directly (GENQ_DATABASE_URL, or the SQLite file under
GENQ_DATA_DIR): tenants, API keys, migrations, storage gc. Whoever can run these can read the database
anyway."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from genq.params import CommandError
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]  # the project root: alembic.ini and migrations/


def settings_for(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with --data-dir / --database-url over them."""
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    return Settings(**overrides)


def upgrade_database(url: str) -> None:
    """`alembic upgrade head` on `url` (in this process: no second interpreter to start)."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False  # keep the caller's logging as it is
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(config, "head")


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    settings = settings_for(args)
    upgrade_database(settings.sql_url)
    out.write(f"database at head: {redact(settings.sql_url)}\n")
    return 0


def redact(url: str) -> str:
    """A database URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _session(settings: Settings):  # type: ignore[no-untyped-def]
    from shared.db import session_factory

    return session_factory(settings.sql_url)()


def named_tenant(session, name_or_id: str):  # type: ignore[no-untyped-def]
    """The tenant of that name or id; refused with a pointer to the list otherwise."""
    from shared.tenants import find_tenant

    tenant = find_tenant(session, name_or_id)
    if tenant is None:
        raise CommandError(f"no tenant named or with id {name_or_id!r} (see `genq admin list-tenants`)")
    return tenant


def cmd_create_tenant(args: argparse.Namespace, out: TextIO) -> int:
    from shared.tenants import TenantError, create_tenant

    with _session(settings_for(args)) as session:
        try:
            tenant = create_tenant(session, args.name)
        except TenantError as exc:
            raise CommandError(str(exc)) from exc
        session.commit()
        out.write(f"{tenant.id}  {tenant.name}\n")
    return 0


def cmd_create_key(args: argparse.Namespace, out: TextIO) -> int:
    from shared.tenants import create_api_key

    with _session(settings_for(args)) as session:
        tenant = named_tenant(session, args.tenant)
        key, plaintext = create_api_key(session, tenant.id, name=args.name or "", admin=args.admin)
        session.commit()
        sys.stderr.write(f"key {key.prefix} for tenant {tenant.name}; it is shown only this once:\n")
        out.write(plaintext + "\n")
    return 0


def cmd_list_tenants(args: argparse.Namespace, out: TextIO) -> int:
    from shared.tenants import list_api_keys, list_tenants

    with _session(settings_for(args)) as session:
        for tenant in list_tenants(session):
            keys = list_api_keys(session, tenant.id)
            live = [f"{k.prefix}{'(admin)' if k.is_admin else ''}" for k in keys if k.revoked_at is None]
            out.write(f"{tenant.id}  {tenant.name:<24}  keys: {', '.join(live) or '-'}\n")
    return 0


def key_prefix(text: str) -> str:
    """`gq_1a2b3c4d_...` or `gq_1a2b3c4d` or `1a2b3c4d` -> `1a2b3c4d`."""
    text = text.strip()
    if text.startswith("gq_"):
        text = text[3:]
    return text.split("_", 1)[0]


def cmd_revoke_key(args: argparse.Namespace, out: TextIO) -> int:
    from sqlalchemy import select

    from shared.models import ApiKey
    from shared.tenants import hash_key, revoke_api_key

    prefix = key_prefix(args.prefix)
    is_full_key = args.prefix.strip().count("_") >= 2
    query = select(ApiKey).where(
        ApiKey.key_hash == hash_key(args.prefix.strip()) if is_full_key else ApiKey.prefix == prefix
    )
    with _session(settings_for(args)) as session:
        keys = list(session.scalars(query))
        if not keys:
            raise CommandError(f"no API key with prefix {prefix!r}")
        if len(keys) > 1:
            raise CommandError(f"{len(keys)} keys share prefix {prefix!r}; revoke by the full key")
        revoked = revoke_api_key(session, keys[0].id)
        session.commit()
        out.write(f"key {prefix}: {'revoked' if revoked else 'was already revoked'}\n")
    return 0


def cmd_webhook_secret(args: argparse.Namespace, out: TextIO) -> int:
    """Make the tenant's webhook secret, or with --rotate a new one; printed this once, like an API key
    (genq keeps it to sign with, but never shows it again)."""
    from shared.webhooks import ROTATION_GRACE, rotate_secret

    with _session(settings_for(args)) as session:
        tenant = named_tenant(session, args.tenant)
        if tenant.webhook_secret is not None and not args.rotate:
            raise CommandError(
                f"tenant {tenant.name} already has a webhook secret (shown when it was made); "
                "--rotate replaces it"
            )
        had_one = tenant.webhook_secret is not None
        secret = rotate_secret(session, tenant)
        session.commit()
        grace = f"; the previous one also signs for {ROTATION_GRACE}" if had_one else ""
        sys.stderr.write(f"webhook secret for tenant {tenant.name}{grace}; it is shown only this once:\n")
        out.write(secret + "\n")
    return 0


def cmd_gc(args: argparse.Namespace, out: TextIO) -> int:
    """Delete finished jobs' objects that no row references (shared/storage_gc.py)."""
    from shared.db import session_factory
    from shared.storage import make_store
    from shared.storage_gc import collect_garbage

    settings = settings_for(args)
    sessions = session_factory(settings.sql_url)
    grace = settings.gc_grace_seconds if args.grace_seconds is None else args.grace_seconds
    tenant_id = None
    if args.tenant:
        with sessions() as session:
            tenant_id = named_tenant(session, args.tenant).id
    report = collect_garbage(
        sessions,
        make_store(settings),
        grace_seconds=grace,
        limit=args.limit,
        rescan=args.all,
        dry_run=args.dry_run,
        tenant_id=tenant_id,
    )
    out.write(("dry run: " if args.dry_run else "") + report.summary() + "\n")
    return 1 if report.failed else 0


def _limit_value(text: str | None, kind: type) -> object:
    """A limit from the command line: a number, or "none" to remove the limit."""
    if text is None or text.lower() in ("none", "off", "unlimited"):
        return None
    if kind is str:
        return text
    try:
        return kind(text)
    except ValueError:
        raise CommandError(f"{text!r} is not a number (or 'none' to remove the limit)") from None


LIMIT_OPTIONS = {  # option -> (tenant column, type)
    "weight": ("weight", float),
    "max_queued": ("max_queued_jobs", int),
    "max_running": ("max_running_jobs", int),
    "gpu_seconds_per_day": ("gpu_seconds_per_day", float),
    "rate_limit": ("rate_limit", str),
}


def cmd_limits(args: argparse.Namespace, out: TextIO) -> int:
    """Show a tenant's limits and today's use; with options, change them first (shared/usage.py)."""
    import json

    from shared.usage import set_limits, usage_view

    changes = {
        column: _limit_value(getattr(args, option), kind)
        for option, (column, kind) in LIMIT_OPTIONS.items()
        if getattr(args, option) is not None
    }
    with _session(settings_for(args)) as session:
        tenant = named_tenant(session, args.tenant)
        if changes:
            try:
                set_limits(session, tenant, **changes)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            session.commit()
        out.write(json.dumps({"tenant": tenant.name, **usage_view(session, tenant)}, indent=2) + "\n")
    return 0


ADMIN_COMMANDS = {
    "limits": cmd_limits,
    "webhook-secret": cmd_webhook_secret,
    "create-tenant": cmd_create_tenant,
    "create-key": cmd_create_key,
    "list-tenants": cmd_list_tenants,
    "revoke-key": cmd_revoke_key,
    "gc": cmd_gc,
}
