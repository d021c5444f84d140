"""The Flask app factory: settings in, an app with every blueprint, auth and JSON errors out.

The API sends no job messages: it commits held jobs and wakes the scheduler (over the broker's Redis);
tests pass their own `wake` to record it. The Celery app made here carries webhook deliveries.
"""

from __future__ import annotations

import logging

from flask import Flask

from api.auth import install_auth
from api.context import ApiContext, install
from api.dashboard import bp as dashboard
from api.download_urls import DownloadUrls
from api.errors import register_error_handlers
from api.key_cache import KeyCache
from api.metrics import install_metrics
from api.rate_limits import install_rate_limits
from api.request_context import bind_tenant_to_logs, install_request_context
from api.routes import batches, datasets, health, jobs, models, objects, openapi, usage, webhooks
from api.submission import Wake
from api.waiting import ChangeWaiters
from shared.db import session_factory
from shared.job_events import ChangeNotifier
from shared.queue import make_celery
from shared.scheduling import wake as wake_scheduler
from shared.settings import Settings, get_settings
from shared.storage import make_store

MULTIPART_OVERHEAD_BYTES = 1024 * 1024  # form framing and the name field around an upload


def create_app(settings: Settings | None = None, wake: Wake | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask("genq", static_folder=None)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    celery = make_celery(settings, name="genq-api")
    store = make_store(settings)
    notifier = ChangeNotifier(settings.broker_url)
    install(
        app,
        ApiContext(
            settings=settings,
            sessions=session_factory(settings.sql_url),
            store=store,
            celery=celery,
            wake=wake or (lambda queues: wake_scheduler(notifier.client, queues)),
            keys=KeyCache(settings.api_key_cache_seconds),
            urls=DownloadUrls(store),
            waiters=ChangeWaiters(settings.broker_url),
            notifier=notifier,
        ),
    )
    install_request_context(app)
    install_metrics(app)
    install_auth(app)
    install_rate_limits(app, settings)
    app.before_request(bind_tenant_to_logs)
    register_error_handlers(app)
    app.register_blueprint(dashboard)
    for module in (jobs, batches, models, datasets, objects, health, openapi, webhooks, usage):
        app.register_blueprint(module.bp)
    logging.getLogger("genq.api").setLevel(logging.INFO)
    return app
