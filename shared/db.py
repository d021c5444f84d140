"""Engines and sessions: one engine per process, short transactions everywhere."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # Several processes (API, workers, sweeper) share the file: WAL lets readers run beside the one
    # writer, and busy_timeout makes a writer wait for the lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, **kwargs)


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """The process-wide engine for a URL, created on first use and kept until `dispose_engines()`.

    Never evicted: an engine dropped while its pool holds connections would close them only when the
    garbage collector gets to it."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
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
