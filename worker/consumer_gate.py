"""A worker that cannot reach its database stops taking messages, and takes them again once it can.

Every job starts with a claim in SQL, so a worker cut off from the database can only hand each message
back (`worker.tasks`); left consuming, it would keep pulling messages that healthier workers could run.
A thread in the worker's main process pings the database every `database_check_seconds`; the consumer's
event loop reads the verdict and cancels its queues (as `celery control cancel_consumer` does) or adds
them back. The same consumer methods Celery's remote control uses, called from the event loop thread
(a timer), never from the ping thread. A ping that has not answered within `timeout` counts as failed:
a database that hangs is as unusable as one that refuses.

No engine (torch) imports here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)


class ConsumerGate:
    """The decision: consume while the last ping succeeded, pause after a failed or overdue one."""

    def __init__(
        self,
        queues: Sequence[str],
        pause: Callable[[str], object],
        resume: Callable[[str], object],
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queues = list(queues)
        self.pause = pause  # Consumer.cancel_task_queue
        self.resume = resume  # Consumer.add_task_queue
        self.timeout = timeout
        self.clock = clock
        self.paused = False
        self.healthy = True
        self.last_error = ""
        self._ping_started: float | None = None

    def ping_started(self) -> None:
        self._ping_started = self.clock()

    def ping_finished(self, error: BaseException | None) -> None:
        self._ping_started = None
        self.healthy = error is None
        if error is not None:
            self.last_error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"

    def database_ok(self) -> bool:
        started = self._ping_started
        if started is not None and self.clock() - started > self.timeout:
            self.last_error = f"no answer within {self.timeout:g}s"
            return False
        return self.healthy

    def apply(self) -> None:
        """Called in the consumer's event loop: pause or resume the queues when the verdict changed."""
        ok = self.database_ok()
        if not ok and not self.paused:
            self.paused = True
            log.warning(
                "the database does not answer (%s): stopped consuming from %s until it does",
                self.last_error,
                ", ".join(self.queues),
            )
            for queue in self.queues:
                self.pause(queue)
        elif ok and self.paused:
            self.paused = False
            log.info("the database answers again: consuming from %s", ", ".join(self.queues))
            for queue in self.queues:
                self.resume(queue)


class DatabasePinger:
    """The thread that feeds a gate: one ping per interval (each bounded by the engine's timeouts)."""

    def __init__(self, gate: ConsumerGate, ping: Callable[[], None], interval: float) -> None:
        self.gate = gate
        self.ping = ping
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="genq-database-ping", daemon=True)

    def ping_once(self) -> None:
        self.gate.ping_started()
        try:
            self.ping()
        except Exception as error:
            self.gate.ping_finished(error)
        else:
            self.gate.ping_finished(None)

    def start(self) -> DatabasePinger:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval):
            self.ping_once()
