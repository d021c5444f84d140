"""What every runner is given and gives back."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared.job_state import Lease
from shared.settings import Settings
from shared.storage import ObjectStore
from worker.engine.api import RunContext
from worker.outputs import JobOutputs


class JobError(Exception):
    """The job cannot run as asked: `code` and the message are shown to the user. Not retried."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class JobRun:
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    params: dict[str, Any]  # as stored; each runner validates them with its shared.specs class
    checkpoint_key: str | None  # training: where the previous attempt left off
    lease: Lease
    ctx: RunContext  # progress, cancel check, device
    settings: Settings
    sessions: sessionmaker[Session]
    store: ObjectStore
    outputs: JobOutputs  # uploads under the job's prefix; they become the job's artifacts
    workdir: Path  # scratch space, removed after the run


@dataclass
class Outcome:
    result: dict[str, Any]
    # Extra rows written in the transaction that marks the job succeeded (a registry entry, merged metrics),
    # so they exist exactly when the job succeeded.
    record: Callable[[Session], None] | None = None
