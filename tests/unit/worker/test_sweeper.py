"""The sweeper on SQLite with a stand-in broker: requeue expired leases, hold again only lost jobs, wake
the scheduler."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared import job_state
from shared.db import engine_for
from shared.models import Base, Job, JobStatus, Tenant, utcnow
from shared.scheduling import wake_channel
from shared.settings import Settings
from shared.specs import JobKind
from worker.sweeper import Sweep, SweeperThread, message_task_ids, queue_keys

OLD = utcnow() - dt.timedelta(hours=1)


def kombu_message(task_id: str) -> bytes:
    # The shape kombu's Redis transport stores (task protocol 2), trimmed.
    return json.dumps(
        {"body": "W10=", "headers": {"task": "genq.train", "id": task_id}, "properties": {}}
    ).encode()


def unacked_entry(task_id: str) -> bytes:
    # kombu's Redis transport: unacked[delivery_tag] = JSON [message, exchange, routing_key]
    return json.dumps([json.loads(kombu_message(task_id)), "tq", "tq"]).encode()


class FakeLock:
    """redis-py's Lock as the sweeper uses it: SET NX with a token, released only while still held."""

    def __init__(self, held: dict[str, str], key: str) -> None:
        self.held, self.key, self.token = held, key, uuid.uuid4().hex

    def acquire(self) -> bool:
        if self.key in self.held:
            return False
        self.held[self.key] = self.token
        return True

    def release(self) -> None:
        from redis.exceptions import LockNotOwnedError

        if self.held.get(self.key) != self.token:
            raise LockNotOwnedError("not ours")
        del self.held[self.key]


class FakePipeline:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker

    def __enter__(self) -> FakePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def publish(self, channel: str, message: str) -> None:
        self.broker.published.append((channel, message))

    def execute(self) -> None:
        pass


class FakeBroker:
    def __init__(self, lists: dict[str, list[bytes]], unacked: dict[str, bytes] | None = None) -> None:
        self.lists = lists
        self.unacked = unacked or {}
        self.locks: dict[str, str] = {}
        self.published: list[tuple[str, str]] = []

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)

    def llen(self, key: str) -> int:
        return len(self.lists.get(key, []))

    def lrange(self, key: str, start: int, end: int) -> list[bytes]:
        return self.lists.get(key, [])[start : end + 1]

    def hscan_iter(self, key: str, count: int = 10) -> Any:
        assert key == "unacked"
        return iter(self.unacked.items())

    def lock(self, key: str, **options: Any) -> FakeLock:
        return FakeLock(self.locks, key)

    def close(self) -> None:
        pass


class FakeApp:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.conf = type(
            "Conf", (), {"broker_transport_options": {"sep": ":", "priority_steps": list(range(10))}}
        )

    def send_task(self, name: str, **kwargs: Any) -> None:
        self.sent.append({"name": name, **kwargs})


@pytest.fixture()
def sweep(tmp_path: Path) -> Sweep:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'genq.db'}",
        train_queue="tq",
        sample_queue="sq",
        requeue_after_seconds=60,
        max_attempts=3,
    )
    Base.metadata.create_all(engine_for(settings.sql_url))
    sweep = Sweep(settings, FakeApp())  # type: ignore[arg-type]
    sweep.broker = FakeBroker({})  # type: ignore[assignment]
    return sweep


def _add_job(sessions: sessionmaker[Session], kind: JobKind = JobKind.train, **values: Any) -> uuid.UUID:
    with sessions.begin() as session:
        tenant = Tenant(name=uuid.uuid4().hex)
        session.add(tenant)
        session.flush()
        queue = values.pop("queue", "tq" if kind == JobKind.train else "sq")
        job = Job(tenant_id=tenant.id, kind=kind, params={}, queue=queue, **values)
        session.add(job)
        session.flush()
        return job.id


def _status(sessions: sessionmaker[Session], job_id: uuid.UUID) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_queue_keys_follow_kombu_priority_lists() -> None:
    assert queue_keys(["q"], ":", [0, 3, 9]) == ["q", "q:3", "q:9"]


def test_message_ids_skip_garbage() -> None:
    assert list(message_task_ids([kombu_message("a"), b"not json", b"[]", kombu_message("b")])) == ["a", "b"]


def test_expired_lease_is_requeued_held_and_the_scheduler_woken(sweep: Sweep) -> None:
    job_id = _add_job(sweep.sessions, priority=7)
    with sweep.sessions.begin() as session:
        job_state.claim_job(session, job_id, "dead-worker", lease_seconds=-1)  # already expired

    report = sweep.once()
    assert (report.requeued, report.republished) == (1, 0)
    assert sweep.app.sent == []  # type: ignore[attr-defined]  # the scheduler sends, in its turn
    woken = {channel for channel, _ in sweep.broker.published}  # type: ignore[attr-defined]
    assert woken == {wake_channel("tq"), wake_channel("sq")}
    job = _status(sweep.sessions, job_id)
    assert job.status == JobStatus.queued and job.published_at is None


def test_lost_messages_are_held_again_unless_waiting_in_the_broker(sweep: Sweep) -> None:
    held = _add_job(sweep.sessions, JobKind.generate, created_at=OLD, updated_at=OLD)  # never sent
    stale = _add_job(sweep.sessions, published_at=OLD, created_at=OLD)
    waiting = _add_job(sweep.sessions, published_at=OLD, created_at=OLD)
    fresh = _add_job(sweep.sessions, published_at=utcnow())
    foreign = _add_job(sweep.sessions, published_at=OLD, created_at=OLD, queue="another-deployment")
    sweep.broker.lists = {"tq:4": [kombu_message(str(waiting))]}  # type: ignore[attr-defined]

    report = sweep.once()
    assert report.republished == 1 and sweep.app.sent == []  # type: ignore[attr-defined]
    assert _status(sweep.sessions, stale).published_at is None
    assert _status(sweep.sessions, held).published_at is None
    assert _status(sweep.sessions, waiting).published_at == OLD
    for job_id in (fresh, foreign):
        assert _status(sweep.sessions, job_id).published_at is not None
    assert sweep.once().republished == 0  # held now: the scheduler's, not lost again


def test_sweepers_take_turns(sweep: Sweep) -> None:
    assert sweep.take_turn() is not None
    assert sweep.take_turn() is None  # until the turn expires (sweep_interval_seconds)


def _thread(settings: Settings, broker: FakeBroker) -> SweeperThread:
    thread = SweeperThread(settings, FakeApp())  # type: ignore[arg-type]
    thread.sweep.broker = broker  # type: ignore[assignment]
    return thread


def test_a_sweeper_without_its_database_leaves_the_turn_to_one_with_it(sweep: Sweep, tmp_path: Path) -> None:
    cut_off = sweep.settings.model_copy(
        update={"database_url": f"sqlite:///{tmp_path / 'missing' / 'dir' / 'genq.db'}"}
    )
    broker = FakeBroker({})
    sick, healthy = _thread(cut_off, broker), _thread(sweep.settings, broker)
    abandoned = _add_job(healthy.sweep.sessions)
    with healthy.sweep.sessions.begin() as session:
        job_state.claim_job(session, abandoned, "dead-worker", lease_seconds=-1)

    for _ in range(3):  # it tries every interval, and never holds the turn
        assert sick.turn() is None
        assert broker.locks == {}
    report = healthy.turn()
    assert report is not None and report.requeued == 1
    assert _status(healthy.sweep.sessions, abandoned).status == JobStatus.queued


def test_a_failed_sweep_gives_the_turn_back(sweep: Sweep) -> None:
    broker = FakeBroker({})
    first, second = _thread(sweep.settings, broker), _thread(sweep.settings, broker)

    def fail() -> None:
        raise ConnectionError("lost the database mid-sweep")

    first.sweep.once = fail  # type: ignore[method-assign,assignment]
    assert first.turn() is None
    assert broker.locks == {}  # given back: the next sweeper need not wait out the interval
    assert second.turn() is not None


def test_giving_back_an_expired_turn_leaves_the_new_holder_alone(sweep: Sweep) -> None:
    turn = sweep.take_turn()
    assert turn is not None
    sweep.broker.locks.clear()  # type: ignore[attr-defined]  # expired...
    theirs = sweep.take_turn()  # ...and another sweeper took it
    assert theirs is not None
    sweep.give_back(turn)
    assert sweep.broker.locks == {sweep.lock_key: theirs.token}  # type: ignore[attr-defined]


def test_a_lost_message_is_noticed_after_the_publish_grace_not_requeue_after(sweep: Sweep) -> None:
    assert (sweep.settings.publish_grace_seconds, sweep.settings.requeue_after_seconds) == (10, 60)
    moments_ago = utcnow() - dt.timedelta(seconds=20)
    just_now = utcnow() - dt.timedelta(seconds=2)
    flushed = _add_job(sweep.sessions, published_at=moments_ago)  # the broker lost its message
    held = _add_job(sweep.sessions, published_at=moments_ago)  # a worker holds it, about to claim
    held_long = _add_job(sweep.sessions, published_at=OLD, created_at=OLD)  # held by a hung worker
    waiting = _add_job(sweep.sessions, published_at=moments_ago)
    in_flight = _add_job(sweep.sessions, published_at=just_now)  # the scheduler sent it a moment ago
    sweep.broker.lists = {"tq": [kombu_message(str(waiting))]}  # type: ignore[attr-defined]
    sweep.broker.unacked = {  # type: ignore[attr-defined]
        "tag-1": unacked_entry(str(held)),
        "tag-2": unacked_entry(str(held_long)),
        "tag-3": b"garbage",
    }

    report = sweep.once()
    assert report.republished == 2
    for job_id in (flushed, held_long):
        assert _status(sweep.sessions, job_id).published_at is None
    for job_id in (held, waiting, in_flight):
        assert _status(sweep.sessions, job_id).published_at is not None


def test_queue_filter_on_requeue(sessions: sessionmaker[Session], make_job: Callable[..., uuid.UUID]) -> None:
    mine, theirs = make_job(queue="mine"), make_job(queue="theirs")
    with sessions.begin() as session:
        for job_id in (mine, theirs):
            job_state.claim_job(session, job_id, "w", lease_seconds=-1)
        report = job_state.requeue_expired(session, max_attempts=3, queues=["mine"])
    assert [t.job_id for t in report.requeued] == [mine]
