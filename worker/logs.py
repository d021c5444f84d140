"""The worker's logs as JSON lines (or text, GENQ_LOG_FORMAT) carrying the job they are about.

Celery configures no logging of its own once a `setup_logging` receiver exists; this one installs the
shared formatter in the main process and in the pool process alike. While a task runs, its records carry
`job_id` (the task id) and the `request_id` of the API request that published it (a message header,
see api/request_context.py); `worker.execution` adds `tenant_id` and `attempt` once it holds the job.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from shared.logging import bind_log_context, configure_logging, reset_log_context
from shared.queue import REQUEST_ID_HEADER
from shared.settings import get_settings


@signals.setup_logging.connect
def _configure(loglevel: int | str | None = None, **_: Any) -> None:
    configure_logging(get_settings().log_format, loglevel or "INFO")


@signals.task_prerun.connect
def _bind(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    request_id = getattr(task.request, REQUEST_ID_HEADER, None) if task is not None else None
    reset_log_context()
    bind_log_context(job_id=task_id, request_id=request_id)


@signals.task_postrun.connect
def _unbind(**_: Any) -> None:
    reset_log_context()
