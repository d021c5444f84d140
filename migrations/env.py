"""Alembic environment: genq's models, with the URL from settings (or `-x url=...`)."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from shared.db import make_engine
from shared.models import Base
from shared.settings import Settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    return url or Settings().sql_url


def configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=Base.metadata,
        compare_type=True,
        compare_server_default=True,
        render_as_batch=True,  # SQLite alters tables by copy-and-move
        **kwargs,
    )


def run_migrations_offline() -> None:
    configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = database_url()
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url)
    with engine.connect() as connection:
        configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
