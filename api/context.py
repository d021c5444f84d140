"""What every request needs, made once at startup: settings, sessions, the object store, the scheduler's
wake.

One SQL session per request (opened on first use, closed at teardown); transactions stay short.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import Flask, current_app, g
from sqlalchemy.orm import Session, sessionmaker

from api.download_urls import DownloadUrls
from api.key_cache import KeyCache
from api.submission import Wake
from api.waiting import ChangeWaiters
from shared.job_events import ChangeNotifier
from shared.settings import Settings
from shared.storage import LocalStore, S3Store


@dataclass
class ApiContext:
    settings: Settings
    sessions: sessionmaker[Session]
    store: S3Store | LocalStore
    celery: Celery
    wake: Wake  # tells the scheduler a queue has new work
    keys: KeyCache
    urls: DownloadUrls  # what views mint download URLs with
    waiters: ChangeWaiters  # requests waiting for a job or batch to change (?wait=N)
    notifier: ChangeNotifier


def install(app: Flask, context: ApiContext) -> None:
    app.extensions["genq"] = context

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db", None)
        if session is not None:
            session.close()


def api() -> ApiContext:
    return current_app.extensions["genq"]


def db() -> Session:
    """This request's session."""
    if "db" not in g:
        g.db = api().sessions()
    return g.db
