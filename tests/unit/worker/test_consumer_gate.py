"""The consumer gate: a worker whose database does not answer stops consuming, and resumes when it does."""

from __future__ import annotations

from worker.consumer_gate import ConsumerGate, DatabasePinger


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeConsumer:
    """What the gate calls on Celery's Consumer: cancel_task_queue / add_task_queue."""

    def __init__(self, queues: list[str]) -> None:
        self.consuming = set(queues)
        self.calls: list[tuple[str, str]] = []

    def cancel_task_queue(self, queue: str) -> None:
        self.calls.append(("cancel", queue))
        self.consuming.discard(queue)

    def add_task_queue(self, queue: str) -> None:
        self.calls.append(("add", queue))
        self.consuming.add(queue)


def _gate(clock: FakeClock | None = None) -> tuple[ConsumerGate, FakeConsumer]:
    consumer = FakeConsumer(["genq.sample", "genq.train"])
    gate = ConsumerGate(
        ["genq.sample", "genq.train"],
        consumer.cancel_task_queue,
        consumer.add_task_queue,
        timeout=10,
        clock=clock or FakeClock(),
    )
    return gate, consumer


def test_failed_pings_stop_consuming_until_one_succeeds() -> None:
    gate, consumer = _gate()
    outcomes = iter([None, ConnectionRefusedError("refused"), ConnectionRefusedError("refused"), None])

    def ping() -> None:
        error = next(outcomes)
        if error is not None:
            raise error

    pinger = DatabasePinger(gate, ping, interval=1)
    pinger.ping_once()
    gate.apply()
    assert consumer.calls == [] and consumer.consuming == {"genq.sample", "genq.train"}

    pinger.ping_once()  # the database refuses
    gate.apply()
    gate.apply()  # still paused: not canceled twice
    assert consumer.consuming == set() and gate.paused
    assert consumer.calls == [("cancel", "genq.sample"), ("cancel", "genq.train")]
    assert "ConnectionRefusedError" in gate.last_error

    pinger.ping_once()
    gate.apply()
    assert consumer.consuming == set()
    pinger.ping_once()  # it answers again
    gate.apply()
    assert consumer.consuming == {"genq.sample", "genq.train"} and not gate.paused
    assert consumer.calls[2:] == [("add", "genq.sample"), ("add", "genq.train")]


def test_a_ping_that_hangs_counts_as_failed() -> None:
    clock = FakeClock()
    gate, consumer = _gate(clock)
    gate.ping_started()  # ... and never returns (a black-holed connection)
    clock.now = 5
    gate.apply()
    assert not gate.paused
    clock.now = 11
    gate.apply()
    assert gate.paused and consumer.consuming == set()
    gate.ping_finished(None)  # it came back after all
    gate.apply()
    assert not gate.paused and consumer.consuming == {"genq.sample", "genq.train"}
