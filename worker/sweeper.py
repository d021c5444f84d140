"""The sweeper: settles jobs whose worker died and republishes queued jobs with no message behind them.

Runs as a thread in every worker's main process (see `worker.celery_app`), or alone:
`python -m worker.sweeper [--once]`. Every change it makes is a compare-and-set UPDATE, so any number of
sweepers may run; the worst a race does is publish a job twice, and a second delivery is a no-op. To
save work, the sweeper threads take turns through a short Redis lock: one sweep per interval in all.
No engine (torch) imports here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import redis
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from shared import job_state
from shared.db import session_factory
from shared.job_state import PublishTarget
from shared.queue import make_celery, publish_job
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

PUBLISH_GRACE_SECONDS = 10.0  # the API commits a job row, then publishes: not "lost" in between
SCAN_PAGE = 500  # messages read per LRANGE
MAX_REPUBLISH = 1000  # lost jobs handled per sweep


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


def message_task_ids(raw_messages: Iterable[bytes]) -> Iterator[str]:
    """Task ids (= job ids) from raw kombu messages (task protocol 2: `headers.id`)."""
    for raw in raw_messages:
        try:
            message = json.loads(raw)
            task_id = message.get("headers", {}).get("id") or message.get("properties", {}).get(
                "correlation_id"
            )
        except (ValueError, AttributeError):
            continue
        if task_id:
            yield str(task_id)


def broker_task_ids(client: redis.Redis, keys: Iterable[str]) -> set[str]:
    """Ids of the tasks waiting in the given lists (read page by page: queues may be long)."""
    found: set[str] = set()
    for key in keys:
        length = client.llen(key)
        for start in range(0, length, SCAN_PAGE):
            found.update(message_task_ids(client.lrange(key, start, start + SCAN_PAGE - 1)))
    return found


class Sweep:
    """One sweeper's connections: SQL sessions, the Celery app it publishes with, a Redis client."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or make_celery(settings)
        self.sessions: sessionmaker[Session] = session_factory(settings.sql_url)
        self.broker = redis.Redis.from_url(settings.broker_url)
        options = self.app.conf.broker_transport_options or {}
        self.queues = (settings.train_queue, settings.sample_queue)
        self.lock_key = f"genq:sweep-turn:{settings.train_queue}:{settings.sample_queue}"
        self.keys = queue_keys(
            self.queues,
            options.get("sep", ":"),
            options.get("priority_steps", [0]),
        )

    def take_turn(self) -> bool:
        """True for the one sweeper (of all sharing these queues) whose turn this interval is."""
        interval = max(1, int(self.settings.sweep_interval_seconds))
        return bool(self.broker.set(self.lock_key, os.getpid(), nx=True, ex=interval))

    def once(self) -> SweepReport:
        with self.sessions.begin() as session:
            settled = job_state.requeue_expired(session, self.settings.max_attempts, self.queues)
        self._publish(settled.requeued)
        for target in settled.requeued:
            log.warning("job %s: its worker stopped renewing the lease; requeued", target.job_id)

        with self.sessions() as session:
            candidates = job_state.find_lost_queued(
                session,
                republish_after_seconds=self.settings.requeue_after_seconds,
                unpublished_grace_seconds=min(PUBLISH_GRACE_SECONDS, self.settings.requeue_after_seconds),
                queues=self.queues,
                limit=MAX_REPUBLISH,
            )
        lost: list[PublishTarget] = []
        if candidates:
            waiting = broker_task_ids(self.broker, self.keys)
            lost = [t for t in candidates if str(t.job_id) not in waiting]
            self._publish(lost)
            for target in lost:
                log.warning("job %s was queued with no message in the broker; published again", target.job_id)
        return SweepReport(len(settled.requeued), settled.exhausted, settled.canceled, len(lost))

    def _publish(self, targets: list[PublishTarget]) -> None:
        if not targets:
            return
        # Marked first: a fast worker may claim (and even finish) the job before a later mark would land.
        with self.sessions.begin() as session:
            job_state.mark_published(session, [t.job_id for t in targets])
        for i, target in enumerate(targets):
            try:
                publish_job(self.app, str(target.job_id), target.kind, target.priority, self.settings)
            except Exception:
                with self.sessions.begin() as session:
                    job_state.clear_published(session, [t.job_id for t in targets[i:]])
                raise

    def close(self) -> None:
        self.broker.close()


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
            try:
                report = self.sweep.once() if self.sweep.take_turn() else None
                if report and any((report.requeued, report.exhausted, report.canceled, report.republished)):
                    log.info("sweep: %s", report)
            except Exception:
                log.exception("sweep failed; retrying in %ss", self.interval)
            if self._stopped.wait(self.interval):
                return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.sweeper", description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="sweep once and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if args.once:
        sweep = Sweep(settings)
        print(json.dumps(sweep.once().__dict__))
        sweep.close()
        return
    thread = SweeperThread(settings).start()
    try:
        thread.join()
    except KeyboardInterrupt:
        thread.stop()


if __name__ == "__main__":
    main()
