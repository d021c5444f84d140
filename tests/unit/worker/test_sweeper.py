"""The sweeper on SQLite with a stand-in broker: requeue expired leases, republish only lost jobs."""

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
from shared.settings import Settings
from shared.specs import JobKind
from worker.sweeper import Sweep, message_task_ids, queue_keys

OLD = utcnow() - dt.timedelta(hours=1)


def kombu_message(task_id: str) -> bytes:
    # The shape kombu's Redis transport stores (task protocol 2), trimmed.
    return json.dumps(
        {"body": "W10=", "headers": {"task": "genq.train", "id": task_id}, "properties": {}}
    ).encode()


class FakeBroker:
    def __init__(self, lists: dict[str, list[bytes]]) -> None:
        self.lists = lists

    def llen(self, key: str) -> int:
        return len(self.lists.get(key, []))

    def lrange(self, key: str, start: int, end: int) -> list[bytes]:
        return self.lists.get(key, [])[start : end + 1]

    def set(self, key: str, value: object, nx: bool = False, ex: int | None = None) -> bool:
        if nx and key in self.lists:
            return False
        self.lists[key] = [str(value).encode()]
        return True

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


def test_expired_lease_is_requeued_and_published(sweep: Sweep) -> None:
    job_id = _add_job(sweep.sessions, priority=7)
    with sweep.sessions.begin() as session:
        job_state.claim_job(session, job_id, "dead-worker", lease_seconds=-1)  # already expired

    report = sweep.once()
    assert (report.requeued, report.republished) == (1, 0)
    [sent] = sweep.app.sent  # type: ignore[attr-defined]
    assert (sent["name"], sent["task_id"], sent["queue"], sent["priority"]) == (
        "genq.train",
        str(job_id),
        "tq",
        2,
    )
    job = _status(sweep.sessions, job_id)
    assert job.status == JobStatus.queued and job.published_at is not None


def test_lost_queued_jobs_are_republished_unless_waiting_in_the_broker(sweep: Sweep) -> None:
    never = _add_job(sweep.sessions, JobKind.generate, created_at=OLD, updated_at=OLD)
    stale = _add_job(sweep.sessions, published_at=OLD, created_at=OLD)
    waiting = _add_job(sweep.sessions, published_at=OLD, created_at=OLD)
    fresh = _add_job(sweep.sessions, published_at=utcnow())
    foreign = _add_job(sweep.sessions, published_at=OLD, created_at=OLD, queue="another-deployment")
    sweep.broker.lists = {"tq:4": [kombu_message(str(waiting))]}  # type: ignore[attr-defined]

    report = sweep.once()
    sent = {m["task_id"]: m["queue"] for m in sweep.app.sent}  # type: ignore[attr-defined]
    assert sent == {str(never): "sq", str(stale): "tq"}
    assert report.republished == 2
    assert _status(sweep.sessions, never).published_at is not None
    assert _status(sweep.sessions, waiting).published_at == OLD
    for job_id in (fresh, foreign):
        assert str(job_id) not in sent

    sweep.app.sent.clear()  # type: ignore[attr-defined]
    assert sweep.once().republished == 0  # just republished: not lost again


def test_a_failed_publish_leaves_the_job_for_the_next_sweep(sweep: Sweep) -> None:
    job_id = _add_job(sweep.sessions, created_at=OLD, updated_at=OLD)

    def refuse(name: str, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    sweep.app.send_task = refuse  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        sweep.once()
    assert _status(sweep.sessions, job_id).published_at is None


def test_published_at_is_set_even_when_a_worker_is_faster(sweep: Sweep) -> None:
    job_id = _add_job(sweep.sessions, created_at=OLD, updated_at=OLD)

    def deliver_at_once(name: str, **kwargs: Any) -> None:  # a worker claims it before send_task returns
        with sweep.sessions.begin() as session:
            assert job_state.claim_job(session, uuid.UUID(kwargs["task_id"]), "fast", 60) is not None

    sweep.app.send_task = deliver_at_once  # type: ignore[method-assign]
    assert sweep.once().republished == 1
    job = _status(sweep.sessions, job_id)
    assert job.status == JobStatus.running and job.published_at is not None


def test_sweepers_take_turns(sweep: Sweep) -> None:
    assert sweep.take_turn()
    assert not sweep.take_turn()  # until the turn expires (sweep_interval_seconds)


def test_queue_filter_on_requeue(sessions: sessionmaker[Session], make_job: Callable[..., uuid.UUID]) -> None:
    mine, theirs = make_job(queue="mine"), make_job(queue="theirs")
    with sessions.begin() as session:
        for job_id in (mine, theirs):
            job_state.claim_job(session, job_id, "w", lease_seconds=-1)
        report = job_state.requeue_expired(session, max_attempts=3, queues=["mine"])
    assert [t.job_id for t in report.requeued] == [mine]
