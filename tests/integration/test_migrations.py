"""Migrations run on a real Postgres and on SQLite, and agree with the models (`alembic check`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from tests.conftest import run_alembic

pytestmark = pytest.mark.integration

TABLES = {"tenants", "api_keys", "jobs", "batches", "models", "datasets", "artifacts"}


def test_postgres_is_at_head_and_matches_models(postgres_url: str) -> None:
    checked = run_alembic("check", url=postgres_url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    engine = create_engine(postgres_url)
    assert set(inspect(engine).get_table_names()) >= TABLES
    engine.dispose()


def test_sqlite_upgrade_check_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'genq.db'}"
    for step in (("upgrade", "head"), ("check",), ("downgrade", "base"), ("upgrade", "head")):
        result = run_alembic(*step, url=url)
        assert result.returncode == 0, f"alembic {' '.join(step)}: {result.stderr}"
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) >= TABLES
    engine.dispose()
