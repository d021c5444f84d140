"""The progress writer: throttled to the interval, phase ends and the last step always written."""

from __future__ import annotations

from typing import Any

from shared.models import JobStatus
from worker.engine.runtime import Progress
from worker.progress import ProgressWriter, json_safe


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _writer(clock: FakeClock, statuses: list[JobStatus | None] | None = None):  # type: ignore[no-untyped-def]
    written: list[dict[str, Any]] = []
    observed: list[JobStatus | None] = []

    def write(document: dict[str, Any]) -> JobStatus | None:
        written.append(document)
        return statuses.pop(0) if statuses else JobStatus.running

    return ProgressWriter(write, interval=0.5, observe=observed.append, clock=clock), written, observed


def test_at_most_one_write_per_interval() -> None:
    clock = FakeClock()
    writer, written, _ = _writer(clock)
    for step in range(1, 1001):  # 1000 steps over 2 seconds
        clock.now = step * 0.002
        writer(Progress("train", step, 5000, {"loss": 1.0 / step}))
    # The first report, then one per 0.5 s; the latest report waits for the next write or a flush.
    assert [d["step"] for d in written] == [1, 251, 501, 751]
    writer.flush()
    assert written[-1]["step"] == 1000
    assert written[-1]["metrics"] == {"loss": 0.001}
    assert {d["phase"] for d in written} == {"train"} and written[0]["total"] == 5000
    assert written[0]["started_at"] == written[-1]["started_at"]


def test_last_step_phase_change_and_flush_are_written() -> None:
    clock = FakeClock()
    writer, written, _ = _writer(clock)
    writer(Progress("train", 1, 3))
    writer(Progress("train", 2, 3))  # throttled
    writer(Progress("train", 3, 3))  # the last step
    writer(Progress("evaluate", 1, 10))  # a new phase
    writer(Progress("evaluate", 2, 10))  # throttled, until flushed
    writer.flush()
    writer.flush()  # nothing pending: no write
    assert [(d["phase"], d["step"]) for d in written] == [
        ("train", 1),
        ("train", 3),
        ("evaluate", 1),
        ("evaluate", 2),
    ]


def test_statuses_are_handed_to_the_observer() -> None:
    clock = FakeClock()
    writer, _, observed = _writer(clock, [JobStatus.running, JobStatus.canceling])
    writer(Progress("train", 1, 10))
    clock.now = 1.0
    writer(Progress("train", 2, 10))
    assert observed == [JobStatus.running, JobStatus.canceling]


def test_a_failed_write_does_not_raise() -> None:
    def failing(_: dict[str, Any]) -> JobStatus | None:
        raise ConnectionError("database away")

    writer = ProgressWriter(failing, interval=0.5)
    writer(Progress("train", 1, 2))
    assert writer.writes == 0


def test_failed_writes_are_reported_and_backed_off() -> None:
    """Each failure reaches `on_error` (the lease keeper counts it); writes back off while they fail,
    so a step loop whose database is gone does not wait on a write every interval."""
    clock, attempts, errors = FakeClock(), [], []
    down = True

    def write(document: dict[str, Any]) -> JobStatus | None:
        attempts.append(document["step"])
        if down:
            raise ConnectionError("database away")
        return JobStatus.running

    writer = ProgressWriter(write, interval=0.5, clock=clock, on_error=errors.append)
    for step in range(1, 401):  # 4 seconds of steps
        clock.now = step * 0.01
        writer(Progress("train", step, 10_000))
    # Tried at 0.01 s, then after 1 s, then after 2 s more (doubling): not every 0.5 s.
    assert attempts == [1, 101, 301]
    assert len(errors) == 3 and all(isinstance(e, ConnectionError) for e in errors)
    down = False
    clock.now = 10.0
    writer(Progress("train", 1000, 10_000))
    assert attempts[-1] == 1000 and writer.failures == 0 and writer.writes == 1


def test_non_finite_metrics_become_null() -> None:
    assert json_safe({"a": float("nan"), "b": [float("inf"), 1.5], "c": "x"}) == {
        "a": None,
        "b": [None, 1.5],
        "c": "x",
    }
