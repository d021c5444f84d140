"""The sweeper: settles jobs whose worker died and finds dispatched jobs whose message the broker lost.

Runs as a thread in every worker's main process (see `worker.celery_app`), or alone:
`python -m worker.sweeper [--once]`. Every change it makes is a compare-and-set UPDATE, so any number of
sweepers may run. It never publishes: a requeued job, or one whose message is lost, is held again
(`published_at` NULL) and the scheduler is woken to dispatch it in its turn. To save work, the sweeper
threads take turns through a short Redis lock: one sweep per interval in all.
Only a sweeper whose database answers takes the turn, and one whose sweep fails gives it back, so a
worker cut off from the database never keeps the healthy ones from sweeping.

A lost message is found by looking: a dispatched job whose message left more than
`publish_grace_seconds` ago, and which is neither waiting in the broker's lists nor held (reserved,
unacknowledged) by a worker, has none, and is held again within a sweep or two of a broker losing its
data. A message a worker holds but never turns into a claim (its worker hung) is given up after
`requeue_after_seconds`.
No engine (torch) imports here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import redis
from celery import Celery
from redis.exceptions import LockError
from redis.lock import Lock
from sqlalchemy.orm import Session, sessionmaker

from shared import job_state
from shared.db import ping_database, session_factory
from shared.job_events import ChangeNotifier
from shared.job_state import PublishTarget
from shared.models import utcnow
from shared.queue import make_celery
from shared.scheduling import wake
from shared.settings import Settings
from shared.storage import probe_store
from shared.storage_gc import collect_garbage
from worker.background import serve
from worker.metrics import swept

log = logging.getLogger(__name__)

SCAN_PAGE = 500  # messages read per LRANGE / HSCAN
MAX_REPUBLISH = 1000  # dispatched jobs checked for a lost message per sweep
GC_JOBS_PER_SWEEP = 200  # finished jobs whose storage one sweep tidies
GC_STORAGE_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class SweepReport:
    requeued: int
    exhausted: int
    canceled: int
    republished: int


def queue_keys(queues: Iterable[str], sep: str, priority_steps: Iterable[int]) -> list[str]:
    """The Redis lists holding a queue's messages: kombu keeps one list per priority step,
    `<queue>` for step 0 and `<queue><sep><step>` for the others."""
    return [queue if step == 0 else f"{queue}{sep}{step}" for queue in queues for step in priority_steps]


def _task_id(message: object) -> str | None:
    """The task id (= job id) of a kombu message (task protocol 2: `headers.id`)."""
    try:
        task_id = message.get("headers", {}).get("id") or message.get("properties", {}).get(  # type: ignore[attr-defined]
            "correlation_id"
        )
    except AttributeError:
        return None
    return str(task_id) if task_id else None


def message_task_ids(raw_messages: Iterable[bytes]) -> Iterator[str]:
    """Task ids (= job ids) from raw kombu messages."""
    for raw in raw_messages:
        try:
            task_id = _task_id(json.loads(raw))
        except ValueError:
            continue
        if task_id:
            yield task_id


def broker_task_ids(client: redis.Redis, keys: Iterable[str]) -> set[str]:
    """Ids of the tasks waiting in the given lists (read page by page: queues may be long)."""
    found: set[str] = set()
    for key in keys:
        length = client.llen(key)
        for start in range(0, length, SCAN_PAGE):
            found.update(message_task_ids(client.lrange(key, start, start + SCAN_PAGE - 1)))
    return found


def held_task_ids(client: redis.Redis, unacked_key: str) -> set[str]:
    """Ids of the tasks workers hold (delivered, not yet acknowledged). kombu's Redis transport keeps each
    in the `unacked` hash, delivery tag -> JSON `[message, exchange, routing_key]`, until the ack."""
    found: set[str] = set()
    for _tag, value in client.hscan_iter(unacked_key, count=SCAN_PAGE):
        try:
            task_id = _task_id(json.loads(value)[0])
        except (ValueError, TypeError, IndexError, KeyError):
            continue
        if task_id:
            found.add(task_id)
    return found


class Sweep:
    """One sweeper's connections: SQL sessions, the Celery app it publishes with, a Redis client."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or make_celery(settings)
        self.sessions: sessionmaker[Session] = session_factory(settings.sql_url)
        self.broker = redis.Redis.from_url(settings.broker_url)
        self.notifier = ChangeNotifier(settings.broker_url)
        options = self.app.conf.broker_transport_options or {}
        self.queues = (settings.train_queue, settings.sample_queue)
        self.lock_key = f"genq:sweep-turn:{settings.train_queue}:{settings.sample_queue}"
        self.keys = queue_keys(
            self.queues,
            options.get("sep", ":"),
            options.get("priority_steps", [0]),
        )
        self.unacked_key = options.get("unacked_key", "unacked")
        # Tidying storage is best effort: short timeouts and one try, so a hung S3 never holds up the
        # requeues that the sweep is for.
        self.store = probe_store(settings, timeout=GC_STORAGE_TIMEOUT_SECONDS)
        self._database_down = False

    def database_ok(self) -> bool:
        """Whether this sweeper's database answers (logged when that changes)."""
        try:
            ping_database(self.settings.sql_url)
        except Exception as error:
            if not self._database_down:
                log.warning("sweeper: the database does not answer (%s); leaving sweeps to others", error)
            self._database_down = True
            return False
        if self._database_down:
            log.info("sweeper: the database answers again")
        self._database_down = False
        return True

    def take_turn(self) -> Lock | None:
        """The turn (a Redis lock that expires after the interval) for the one sweeper, of all sharing
        these queues, whose turn this interval is; None for the others. The lock's token makes giving it
        back (`give_back`) delete it only while it is still this sweeper's."""
        interval = max(1, int(self.settings.sweep_interval_seconds))
        turn = self.broker.lock(self.lock_key, timeout=interval, blocking=False, thread_local=False)
        return turn if turn.acquire() else None

    @staticmethod
    def give_back(turn: Lock) -> None:
        with contextlib.suppress(LockError):  # expired (or taken) meanwhile: nothing of ours to delete
            turn.release()

    def once(self) -> SweepReport:
        with self.sessions.begin() as session:
            settled = job_state.requeue_expired(session, self.settings.max_attempts, self.queues)
        for target in settled.requeued:
            log.warning("job %s: its worker stopped renewing the lease; requeued", target.job_id)
        self.notifier.changed(settled.changed)  # clients waiting on these jobs (?wait=, cached ETags)

        lost = self._find_lost()
        if lost:
            with self.sessions.begin() as session:
                job_state.clear_published(session, [t.job_id for t in lost])
        for target in lost:
            log.warning(
                "job %s was dispatched but its message is not in the broker; held again", target.job_id
            )
        if settled.requeued or lost:
            wake(self.broker, self.queues)
        # Outputs of finished jobs that no row references (stale attempts, superseded checkpoints,
        # canceled and failed jobs); a bounded slice per sweep, skipped while storage is down.
        collect_garbage(self.sessions, self.store, self.settings.gc_grace_seconds, limit=GC_JOBS_PER_SWEEP)
        report = SweepReport(len(settled.requeued), settled.exhausted, settled.canceled, len(lost))
        swept(report.requeued, report.exhausted, report.canceled, report.republished)
        return report

    def _find_lost(self) -> list[PublishTarget]:
        grace = min(self.settings.publish_grace_seconds, self.settings.requeue_after_seconds)
        with self.sessions() as session:
            candidates = job_state.find_lost_queued(
                session, republish_after_seconds=grace, queues=self.queues, limit=MAX_REPUBLISH
            )
        if not candidates:
            return []
        waiting = broker_task_ids(self.broker, self.keys)
        absent = [t for t in candidates if str(t.job_id) not in waiting]
        if not absent:
            return []
        # Read after the lists: a message moves list -> unacked hash -> gone (acked after its claim), so
        # one that moved between the reads is seen in the hash, or its job is no longer queued.
        held = held_task_ids(self.broker, self.unacked_key)
        stale = utcnow() - dt.timedelta(seconds=self.settings.requeue_after_seconds)
        return [t for t in absent if str(t.job_id) not in held or t.published_at < stale]

    def close(self) -> None:
        self.broker.close()
        self.notifier.close()


class SweeperThread:
    """Sweeps every `sweep_interval_seconds` until stopped; a failed sweep is logged and retried."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.sweep = Sweep(settings, app)
        self.interval = settings.sweep_interval_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="genq-sweeper", daemon=True)

    def start(self) -> SweeperThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)
        self.sweep.close()

    def join(self) -> None:
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.turn()
            if self._stopped.wait(self.interval):
                return

    def turn(self) -> SweepReport | None:
        """One interval's work: check the database, take the turn, sweep; a failed sweep gives the
        turn back so another sweeper can take it at once."""
        try:
            if not self.sweep.database_ok():
                return None
            turn = self.sweep.take_turn()
            if turn is None:
                return None
        except Exception:
            log.exception("sweep: taking the turn failed; retrying in %ss", self.interval)
            return None
        try:
            report = self.sweep.once()
        except Exception:
            log.exception("sweep failed; turn given back, retrying in %ss", self.interval)
            self.sweep.give_back(turn)
            return None
        if any((report.requeued, report.exhausted, report.canceled, report.republished)):
            log.info("sweep: %s", report)
        return report


def _once(settings: Settings) -> dict[str, int]:
    sweep = Sweep(settings)
    try:
        return sweep.once().__dict__
    finally:
        sweep.close()


def main(argv: list[str] | None = None) -> None:
    serve(
        "python -m worker.sweeper",
        __doc__.splitlines()[0],
        _once,
        lambda settings: SweeperThread(settings).start(),
        argv,
    )


if __name__ == "__main__":
    main()
