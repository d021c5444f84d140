"""What stopped a job, as a stable error code: the one place that decides it.

Two kinds of failure. A *permanent* one (bad parameters, a broken dataset, a missing checkpoint, a bug)
would fail again on any worker, so the job fails with its code. A *transient* one (the database or the
object store did not answer) says nothing about the job: the attempt goes back to the queue, and the job
fails only when its attempts run out. Messages are shown to users, so they never name internal object
keys.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from shared.datasets import DatasetError
from shared.storage import ObjectNotFound, StorageError, StorageUnavailable
from worker.engine.runtime import ConfigError
from worker.runners.base import JobError

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 300
# Object keys (`tenants/<tenant>/jobs/<job>/...`) and bucket-qualified ones are internal: never shown.
_OBJECT_KEY = re.compile(r"[\w.-]*/?tenants/[^\s'\",;)]+")


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    transient: bool = False  # an infrastructure fault: retry the job rather than fail it


def is_database_fault(error: BaseException) -> bool:
    """The database could not be reached or did not answer in time (not: a constraint, bad SQL).

    OperationalError covers refused and dropped connections and statement timeouts; InterfaceError a
    connection the driver already closed; the pool's TimeoutError no free connection in time. A DBAPIError
    flagged `connection_invalidated` is a connection SQLAlchemy saw die mid-statement."""
    if isinstance(error, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def is_infrastructure_fault(error: BaseException) -> bool:
    return is_database_fault(error) or isinstance(error, StorageUnavailable)


def validation_message(error: ValidationError) -> str:
    """'field.path: what is wrong' per problem (a model-level check names its field in its message)."""
    problems = []
    for problem in error.errors():
        where = ".".join(map(str, problem["loc"]))
        what = problem["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {what}" if where else what)
    return "; ".join(problems)


def public_message(text: str) -> str:
    """A message fit for users: object keys replaced, bounded in length."""
    return _OBJECT_KEY.sub("<object>", text)[:MESSAGE_LIMIT]


def classify(error: BaseException) -> Failure:
    """(code, user message, transient?) for whatever ended a job's run."""
    if isinstance(error, JobError):
        return Failure(error.code, public_message(error.message))
    if isinstance(error, ValidationError):
        return Failure("invalid_params", public_message(validation_message(error)))
    if isinstance(error, ConfigError):
        return Failure("invalid_params", public_message(str(error)))
    if isinstance(error, DatasetError):
        return Failure("invalid_dataset", public_message(str(error)))
    if is_database_fault(error):
        return Failure("database_unavailable", "the job database did not answer", transient=True)
    if isinstance(error, StorageUnavailable):
        return Failure("storage_unavailable", "object storage did not answer", transient=True)
    if isinstance(error, ObjectNotFound):
        # Datasets and a training resume point handle their own missing objects; what is left is a
        # model's checkpoint that another job reads.
        return Failure("checkpoint_missing", "a model checkpoint this job needs is missing from storage")
    if isinstance(error, StorageError):
        log.error("job failed on a storage error: %s", error)
        return Failure("storage_error", "object storage refused an operation this job needs")
    log.error("job failed with an unexpected error", exc_info=error)
    return Failure("internal_error", public_message(f"{type(error).__name__}: {error}"))
