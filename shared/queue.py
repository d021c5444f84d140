"""The Celery transport both sides share: task names, queues, and the broker settings.

Job messages are sent by task name (worker/dispatch.py, for the scheduler), so nothing that sends one
imports the engine (or torch). Task id = job id.
"""

from __future__ import annotations

from celery import Celery

from shared.settings import Settings
from shared.specs import JobKind

TASK_NAMES: dict[JobKind, str] = {
    JobKind.train: "genq.train",
    JobKind.generate: "genq.generate",
    JobKind.edit: "genq.edit",
    JobKind.evaluate: "genq.evaluate",
}
SWEEP_TASK = "genq.sweep"
# A job message's header naming the request that submitted the job (worker.logs binds it to log lines).
REQUEST_ID_HEADER = "genq_request_id"
# Webhook deliveries: their own queue (settings.webhook_queue), served by `python -m worker.webhooks`.
WEBHOOK_TASK = "genq.webhook.deliver"


def queue_for(kind: JobKind, settings: Settings) -> str:
    """Training and sampling go to separate queues so GPU pools can be dedicated to either."""
    return settings.train_queue if kind == JobKind.train else settings.sample_queue


def celery_priority(priority: int) -> int:
    """genq priorities run high-first (9 before 0); Celery's Redis transport serves 0 first."""
    return 9 - priority


def make_celery(settings: Settings, name: str = "genq") -> Celery:
    app = Celery(name, broker=settings.broker_url)
    app.conf.update(
        # The SQL job row holds every job's state; no result backend.
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        # A message is acknowledged only when the task returns: a worker killed mid-job leaves it to be
        # redelivered (and the sweeper requeues its expired lease in any case).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One job at a time per process, and no hoarding: a second message waits in Redis for a free worker.
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
            # Longer than any job's redelivery horizon; lost work is the sweeper's business, not Redis's.
            "visibility_timeout": 7 * 24 * 3600,
        },
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.sample_queue,
        worker_hijack_root_logger=False,
    )
    return app
