"""The worker's Celery app: the shared transport settings plus the GPU worker shape.

Run one worker process per GPU, pinned with CUDA_VISIBLE_DEVICES (`python -m worker` does it):

    CUDA_VISIBLE_DEVICES=0 celery -A worker.celery_app worker --hostname gpu0@%h -Q genq.train,genq.sample

Why these settings:
- prefork pool, **spawn** start method: the job runs in a child process that is a fresh interpreter,
  never a fork. CUDA cannot be used in a forked child of a process that initialised it, and a fresh child
  also gives back every byte of GPU and host memory when it is replaced. The main process never imports
  torch (it consumes messages, runs the sweeper); the child imports the engine once, at start.
- concurrency 1: one job at a time per GPU; a second job would compete for the same device memory.
- prefetch multiplier 1 + late acks: a worker holds only the message it is running, acknowledged when the
  job returns, so queued work waits in Redis for whichever GPU frees up first, and a worker that dies
  mid-job leaves its message unacknowledged. The SQL row is the truth either way: the sweeper requeues
  a job whose lease expired and holds again a dispatched job whose message the broker lost.
- the scheduler (worker.scheduler) runs in every worker's main process; one of them, holding a lock,
  sends the messages: only as many as the live workers can start, chosen by priority and fair share.
- a worker whose database does not answer hands each message back (`worker.tasks`) and stops consuming
  until a ping succeeds again (`ConsumerGateStep`, `worker.consumer_gate`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, bootsteps, signals
from kombu import Exchange, Queue

# Celery signal receivers, connected on import: JSON logs with job ids; job metrics and their server.
import worker.logs
import worker.metrics  # noqa: F401
from shared.queue import make_celery
from shared.settings import get_settings

settings = get_settings()
app: Celery = make_celery(settings, name="genq-worker")
app.conf.update(
    include=["worker.tasks"],
    # Both queues by default; `-Q` picks one to dedicate a GPU pool to training or to sampling.
    # Each bound to its own direct exchange, as Celery creates a queue the API names in send_task.
    task_queues=[
        Queue(name, Exchange(name), routing_key=name)
        for name in (settings.train_queue, settings.sample_queue)
    ],
    worker_pool="prefork",
    worker_pool_start_method="spawn",
    worker_concurrency=1,
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # A spawned child imports torch before it reports ready: allow for a slow disk or a busy machine.
    worker_proc_alive_timeout=120,
    worker_send_task_events=False,
    # The job keeps running through a broker reconnection: its state lives in SQL, not in the message.
    worker_cancel_long_running_tasks_on_connection_loss=False,
)
if settings.broker_url.startswith(("redis://", "rediss://")):
    # kombu's Redis transport, minus the worker exit on a queue entry that is not a message.
    app.conf.broker_transport = "worker.transport:Transport"


class SweeperStep(bootsteps.StartStopStep):
    """The sweeper thread, in the worker's main process (not in the pool child that runs jobs)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.sweeper: Any = None

    def start(self, parent: Any) -> None:
        from worker.sweeper import SweeperThread

        self.sweeper = SweeperThread(settings, app).start()

    def stop(self, parent: Any) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
            self.sweeper = None


app.steps["worker"].add(SweeperStep)


class SchedulerStep(bootsteps.StartStopStep):
    """The scheduler thread, in the worker's main process: announces the queues this worker consumes, and
    dispatches held jobs while it holds the scheduler lock (worker.scheduler)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.scheduler: Any = None

    def start(self, parent: Any) -> None:
        from worker.scheduler import SchedulerThread

        queues = sorted(parent.app.amqp.queues.consume_from)
        self.scheduler = SchedulerThread(settings, app, worker_name=parent.hostname, queues=queues).start()

    def stop(self, parent: Any) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None


app.steps["worker"].add(SchedulerStep)

GATE_PING_TIMEOUT_SECONDS = 10.0  # a ping still unanswered after this long counts as failed


class ConsumerGateStep(bootsteps.StartStopStep):
    """Stops consuming while the database does not answer (see `worker.consumer_gate`). In the consumer
    blueprint, after the task consumer exists; it survives consumer restarts (a broker reconnection)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.gate: Any = None
        self.pinger: Any = None
        self.timer_entry: Any = None

    def start(self, c: Any) -> None:
        from shared.db import ping_database
        from worker.consumer_gate import ConsumerGate, DatabasePinger

        if self.gate is None:
            self.gate = ConsumerGate(
                sorted(c.app.amqp.queues.consume_from),
                c.cancel_task_queue,
                c.add_task_queue,
                timeout=GATE_PING_TIMEOUT_SECONDS,
            )
            self.pinger = DatabasePinger(
                self.gate, lambda: ping_database(settings.sql_url), settings.database_check_seconds
            )
            self.pinger.ping_once()  # before the first message reaches the pool
            self.pinger.start()
        self.gate.pause, self.gate.resume = c.cancel_task_queue, c.add_task_queue
        self.gate.apply()
        self.timer_entry = c.timer.call_repeatedly(settings.database_check_seconds, self.gate.apply)

    def stop(self, c: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        if self.pinger is not None:
            self.pinger.stop()


app.steps["consumer"].add(ConsumerGateStep)


@signals.worker_process_init.connect
def _prepare_pool_process(**_: Any) -> None:
    """In the pool child: thread count and allocator, then the engine (torch) loaded before the first job
    arrives."""
    from worker.engine.runtime import configure_threads, tune_allocator

    threads = configure_threads(settings.torch_threads or None)
    tune_allocator()
    import worker.execution
    import worker.runners.edit
    import worker.runners.evaluate
    import worker.runners.generate
    import worker.runners.train  # noqa: F401

    logging.getLogger(__name__).info(
        "pool process %d ready (engine loaded, %d threads)", os.getpid(), threads
    )
