"""Engines and sessions: one engine per process, short transactions everywhere.

A server database is reached with bounded waits, so a database that is down or cut off shows up as an
`OperationalError` within seconds instead of a call that hangs (see `SERVER_CONNECT_ARGS`): the worker
then hands its message back or requeues its job (`worker.failures`), and `/readyz` says so.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine, Select, create_engine, event, func, select, text
from sqlalchemy.orm import Session, sessionmaker

CONNECT_TIMEOUT_SECONDS = 5
# genq's own statements are short (single-row UPDATEs, paged reads); one running longer is stuck on a
# lock or a sick server. Applied to the application's engines, not to migrations (`make_engine` alone).
STATEMENT_TIMEOUT_SECONDS = 30
SERVER_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT_SECONDS,  # libpq: a refused or black-holed connect ends here
    # A peer that vanished mid-connection (cut link, dropped packets): TCP keepalives notice an idle one,
    # and tcp_user_timeout fails a statement whose bytes go unacknowledged for this long (libpq >= 12).
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # Several processes (API, workers, sweeper) share the file: WAL lets readers run beside the one
    # writer, and busy_timeout makes a writer wait for the lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, statement_timeout_seconds: float | None = None, **kwargs: Any) -> Engine:
    """An engine with bounded waits. `statement_timeout_seconds`: a server-side cap on every statement
    (Postgres `statement_timeout`); None for none (migrations may rewrite large tables)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    connect_args = dict(SERVER_CONNECT_ARGS)
    if statement_timeout_seconds and url.startswith("postgresql"):
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_seconds * 1000)}"
    elif not url.startswith("postgresql"):
        connect_args = {}  # the options above are libpq's
    # pre-ping: a pooled connection that died while idle (database restart, failover) is replaced on
    # checkout instead of failing the first statement.
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args=connect_args, **kwargs
    )


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """The process-wide engine for a URL, created on first use and kept until `dispose_engines()`.

    Never evicted: an engine dropped while its pool holds connections would close them only when the
    garbage collector gets to it."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url, STATEMENT_TIMEOUT_SECONDS)
        return engine


def release_connections() -> None:
    """Close every engine's idle pooled connections; the engines stay usable and open new ones on demand."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()


def dispose_engines(url: str | None = None) -> None:
    """Close the pooled connections of one URL's engine (or of all) and forget it."""
    with _engines_lock:
        urls = [url] if url is not None else list(_engines)
        for key in urls:
            engine = _engines.pop(key, None)
            if engine is not None:
                engine.dispose()


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=engine_for(url), expire_on_commit=False)


def ping_database(url: str) -> None:
    """`SELECT 1` on the engine for `url`; raises (OperationalError, ...) when it does not answer."""
    with engine_for(url).connect() as connection:
        connection.execute(text("SELECT 1"))


def capped_count(session: Session, query: Select, cap: int) -> int:
    """The rows `query` selects, counted up to `cap`: an index range read of at most `cap` entries, where
    a plain COUNT would read them all."""
    return session.scalar(select(func.count()).select_from(query.limit(cap).subquery())) or 0
