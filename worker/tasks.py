"""The Celery tasks: one per job kind, task id = job id, the only argument the job id.

Each claims its job and runs the kind's runner (`worker.execution.execute`); the runners and the engine
are imported in the pool process only, so the worker's main process stays free of torch.
"""

from __future__ import annotations

from celery import Task

from shared.queue import TASK_NAMES
from shared.specs import JobKind
from worker.celery_app import app


@app.task(name=TASK_NAMES[JobKind.train], bind=True)
def train(self: Task, job_id: str) -> None:
    from worker.execution import execute
    from worker.runners import train as runner

    execute(job_id, runner.run, self.request.hostname)


@app.task(name=TASK_NAMES[JobKind.generate], bind=True)
def generate(self: Task, job_id: str) -> None:
    from worker.execution import execute
    from worker.runners import generate as runner

    execute(job_id, runner.run, self.request.hostname)


@app.task(name=TASK_NAMES[JobKind.edit], bind=True)
def edit(self: Task, job_id: str) -> None:
    from worker.execution import execute
    from worker.runners import edit as runner

    execute(job_id, runner.run, self.request.hostname)


@app.task(name=TASK_NAMES[JobKind.evaluate], bind=True)
def evaluate(self: Task, job_id: str) -> None:
    from worker.execution import execute
    from worker.runners import evaluate as runner

    execute(job_id, runner.run, self.request.hostname)
