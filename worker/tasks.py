"""The Celery tasks: one per job kind, task id = job id, the only argument the job id.

Each claims its job and runs the kind's runner (`worker.execution.execute`); the runners and the engine
are imported in the pool process only, so the worker's main process stays free of torch.

A claim that cannot reach the database hands the message back: `Reject(requeue=True)` on a late-acked
task makes the worker reject the message with requeue, which kombu's Redis transport implements by
pushing it back onto its queue list (`QoS.reject` -> `restore_by_tag`) before dropping it from the
`unacked` hash. Another worker takes it; this one stops consuming until its database answers
(`worker.consumer_gate`). Celery's guide warns that a requeueing reject can loop; the pause before it
bounds the loop to one try per `CLAIM_RETRY_PAUSE_SECONDS` per worker while the gate has not yet closed
(or where the main process reaches the database and the pool process does not).
"""

from __future__ import annotations

import logging
import time
from types import ModuleType

from celery import Task
from celery.exceptions import Reject

from shared.queue import TASK_NAMES
from shared.specs import JobKind
from worker.celery_app import app

log = logging.getLogger(__name__)

CLAIM_RETRY_PAUSE_SECONDS = 1.0


def _execute(task: Task, job_id: str, runner: ModuleType) -> None:
    from worker.execution import ClaimUnavailable, execute

    try:
        execute(job_id, runner.run, task.request.hostname)
    except ClaimUnavailable as error:
        log.warning("%s (%s); message handed back to the broker", error, error.__cause__.__class__.__name__)
        time.sleep(CLAIM_RETRY_PAUSE_SECONDS)
        raise Reject(str(error), requeue=True) from error


@app.task(name=TASK_NAMES[JobKind.train], bind=True)
def train(self: Task, job_id: str) -> None:
    from worker.runners import train as runner

    _execute(self, job_id, runner)


@app.task(name=TASK_NAMES[JobKind.generate], bind=True)
def generate(self: Task, job_id: str) -> None:
    from worker.runners import generate as runner

    _execute(self, job_id, runner)


@app.task(name=TASK_NAMES[JobKind.edit], bind=True)
def edit(self: Task, job_id: str) -> None:
    from worker.runners import edit as runner

    _execute(self, job_id, runner)


@app.task(name=TASK_NAMES[JobKind.evaluate], bind=True)
def evaluate(self: Task, job_id: str) -> None:
    from worker.runners import evaluate as runner

    _execute(self, job_id, runner)
