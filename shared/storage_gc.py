"""Storage hygiene: a finished job keeps exactly the objects its rows reference; everything else under its
prefix is deleted.

What goes: a failed or canceled job's uploads (it has no artifact rows: a canceled bulk job's shards),
training checkpoints (resume points are of no use once the job is final), and the uploads of stale
attempts (a worker that lost its lease and went on writing under `attempts/<n>/`). What stays: the keys
of the job's Artifact rows and of the models it trained. A model whose checkpoint is not in the listing
is recorded as missing, so its view says so.

A job is swept once, `grace_seconds` after it finished (a stale attempt has stopped by then), and marked
(`jobs.outputs_swept_at`); `rescan=True` sweeps every finished job again. Deletes are idempotent, so two
collectors running at once (sweepers on several workers, an operator's `genq admin gc`) do no harm.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import select, tuple_, update
from sqlalchemy.orm import Session, sessionmaker

from shared.models import TERMINAL_STATUSES, Artifact, Job, TrainedModel, utcnow
from shared.storage import ObjectStore, StorageError, StorageUnavailable, job_prefix

log = logging.getLogger(__name__)

BATCH = 200  # jobs read per query


@dataclass
class GcReport:
    jobs: int = 0  # finished jobs whose prefix was swept
    deleted: int = 0  # objects deleted (or, in a dry run, that would be)
    kept: int = 0  # objects a row references
    missing_checkpoints: int = 0  # models found without their checkpoint
    failed: int = 0  # jobs left for the next run (storage refused a listing or a delete)

    def summary(self) -> str:
        return (
            f"swept {self.jobs} finished jobs: deleted {self.deleted} objects, kept {self.kept}; "
            f"{self.missing_checkpoints} model checkpoints missing; {self.failed} jobs left for the next run"
        )


@dataclass(frozen=True)
class _Finished:
    id: uuid.UUID
    tenant_id: uuid.UUID
    finished_at: dt.datetime


def referenced_keys(session: Session, job_id: uuid.UUID) -> set[str]:
    """The keys that must survive: the job's artifacts and the checkpoints and grids of models it trained."""
    keys = set(session.scalars(select(Artifact.key).where(Artifact.job_id == job_id)))
    for checkpoint, grid in session.execute(
        select(TrainedModel.checkpoint_key, TrainedModel.sample_grid_key).where(
            TrainedModel.training_job_id == job_id
        )
    ):
        keys.add(checkpoint)
        if grid:
            keys.add(grid)
    return keys


def sweep_job(
    sessions: sessionmaker[Session],
    store: ObjectStore,
    job: _Finished,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> GcReport:
    """Delete what no row references under one finished job's prefix; mark the job swept."""
    with sessions() as session:
        keep = referenced_keys(session, job.id)
        models = session.execute(
            select(TrainedModel.id, TrainedModel.checkpoint_key).where(
                TrainedModel.training_job_id == job.id, TrainedModel.checkpoint_missing_at.is_(None)
            )
        ).all()
    prefix = job_prefix(job.tenant_id, job.id)
    listed = set(store.list_keys(prefix))
    garbage = sorted(listed - keep)
    if garbage and not dry_run:
        store.delete_many(garbage)
    missing = [m.id for m in models if m.checkpoint_key.startswith(prefix) and m.checkpoint_key not in listed]
    if not dry_run:
        stamp = now or utcnow()
        with sessions.begin() as session:
            if missing:
                session.execute(
                    update(TrainedModel)
                    .where(TrainedModel.id.in_(missing), TrainedModel.checkpoint_missing_at.is_(None))
                    .values(checkpoint_missing_at=stamp)
                )
            session.execute(
                update(Job)
                .where(Job.id == job.id, Job.status.in_(TERMINAL_STATUSES))
                .values(outputs_swept_at=stamp)
            )
    for model_id in missing:
        log.warning("model %s: its checkpoint is missing from storage", model_id)
    return GcReport(jobs=1, deleted=len(garbage), kept=len(listed & keep), missing_checkpoints=len(missing))


def collect_garbage(
    sessions: sessionmaker[Session],
    store: ObjectStore,
    grace_seconds: float,
    limit: int | None = None,
    rescan: bool = False,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    tenant_id: uuid.UUID | None = None,
) -> GcReport:
    """Sweep finished jobs (oldest first) that finished more than `grace_seconds` ago and were not swept
    yet (every finished job with `rescan`), at most `limit` of them, of one tenant when `tenant_id` is
    given. Stops early when storage is down."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=grace_seconds)
    report = GcReport()
    after: tuple[dt.datetime, uuid.UUID] | None = None
    while limit is None or report.jobs + report.failed < limit:
        batch = _finished_jobs(sessions, cutoff, rescan, after, min(BATCH, limit or BATCH), tenant_id)
        if not batch:
            break
        after = (batch[-1].finished_at, batch[-1].id)
        for job in batch:
            if limit is not None and report.jobs + report.failed >= limit:
                break
            try:
                swept = sweep_job(sessions, store, job, dry_run, now)
            except StorageUnavailable as exc:
                log.warning("storage gc stopped: storage is unavailable (%s)", exc)
                report.failed += 1
                return report
            except StorageError as exc:
                log.warning("storage gc: job %s left for the next run: %s", job.id, exc)
                report.failed += 1
                continue
            report.jobs += 1
            report.deleted += swept.deleted
            report.kept += swept.kept
            report.missing_checkpoints += swept.missing_checkpoints
    if report.jobs or report.failed:
        log.info("storage gc: %s", report.summary())
    return report


def _finished_jobs(
    sessions: sessionmaker[Session],
    cutoff: dt.datetime,
    rescan: bool,
    after: tuple[dt.datetime, uuid.UUID] | None,
    count: int,
    tenant_id: uuid.UUID | None = None,
) -> list[_Finished]:
    # Keyset pagination on (finished_at, id): a sweep marks rows, so offsets would skip some.
    query = select(Job.id, Job.tenant_id, Job.finished_at).where(
        Job.status.in_(TERMINAL_STATUSES), Job.finished_at.is_not(None), Job.finished_at < cutoff
    )
    if not rescan:
        query = query.where(Job.outputs_swept_at.is_(None))
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    if after is not None:
        query = query.where(tuple_(Job.finished_at, Job.id) > tuple_(*after))
    query = query.order_by(Job.finished_at, Job.id).limit(count)
    with sessions() as session:
        return [_Finished(row.id, row.tenant_id, row.finished_at) for row in session.execute(query)]
