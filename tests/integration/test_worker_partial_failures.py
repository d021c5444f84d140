"""Parts cut off rather than dead, on real workers.

- A worker whose database stops answering does not consume: its messages stay in the broker for another
  worker (or for itself, once its database answers again). Its database connection runs through a TCP
  proxy the test cuts (connections closed, new ones refused) and restores; the fault suite does the same
  with network namespaces.
- A claim that fails because the database went away hands its message back to the broker (Celery
  `Reject(requeue=True)`), so the job runs once a claim gets through, and no sweeper is needed for it.
- A worker paused mid-training and cut off from its database while another takes its job over stops when
  it resumes, and records nothing: the winner's model stays the job's.
- A job whose object storage goes away mid-run goes back to the queue (attempt counted) and succeeds
  once storage is back, instead of failing.
- A message the broker lost is sent again after `publish_grace_seconds`, not after
  `requeue_after_seconds`: the sweeper holds its job again and the scheduler sends it.
- A scheduler whose database stops answering steps aside: another takes the lock within its lease.

Jobs here are sent as a scheduler elsewhere would send them (`JobClient.publish`), so that the worker
under test meets a message whatever its own scheduler can do.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import update

from shared.models import Job, JobStatus, utcnow
from shared.specs import JobKind
from shared.storage import S3Store
from tests.conftest import free_port
from tests.integration.conftest import JobClient, WorkerProcess, Workers
from worker.sweeper import broker_task_ids, queue_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to an upstream port until cut; `restore` listens on the same port."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def cut(self) -> None:
        assert self._server is not None
        with contextlib.suppress(OSError):  # wakes the accept() blocked on it (close alone does not)
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture()
def proxy(worker_env: dict[str, str]) -> Iterator[CuttableProxy]:
    upstream = urlsplit(worker_env["GENQ_DATABASE_URL"].replace("postgresql+psycopg", "postgresql"))
    assert upstream.hostname == "127.0.0.1" and upstream.port
    proxy = CuttableProxy(upstream.port)
    yield proxy
    proxy.cut()


def _logged(worker: WorkerProcess, text: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in worker.log_text():
            return True
        time.sleep(0.1)
    return False


def _train_params() -> dict[str, object]:
    options = {"max_steps": 5, "width": 8, "batch_size": 16, "augment": False}
    return {"family": "cnn", "dataset": "digits", "options": options}


def _waiting_in_broker(jobs: JobClient, job_id: uuid.UUID) -> bool:
    settings = jobs.settings
    client = redis.Redis.from_url(settings.broker_url)
    try:
        keys = queue_keys([settings.train_queue, settings.sample_queue], ":", range(10))
        return str(job_id) in broker_task_ids(client, keys)
    finally:
        client.close()


def test_a_worker_cut_off_from_its_database_leaves_messages_in_the_broker(
    worker_env: dict[str, str], jobs: JobClient, proxy: CuttableProxy, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    pool = Workers({**worker_env, "GENQ_DATABASE_URL": _via_proxy(worker_env, proxy)}, tmp_path / "logs")
    try:
        worker = pool.start()
        proxy.cut()
        assert _logged(worker, "stopped consuming from"), worker.log_text()[-3000:]

        job_id = jobs.insert(JobKind.train, _train_params())
        jobs.publish(job_id)
        deadline = time.monotonic() + 5  # long enough for a consuming worker to have taken it
        while time.monotonic() < deadline:
            job = jobs.get(job_id)
            assert (job.status, job.attempts) == (JobStatus.queued, 0)
            time.sleep(0.2)
        # A fetch already under way when the queues were canceled hands its message back (kombu requeues
        # a message no consumer wants), so it may be away for a moment; it must be back in its list.
        deadline = time.monotonic() + 5
        while not _waiting_in_broker(jobs, job_id):
            assert time.monotonic() < deadline, "the message left the broker"
            time.sleep(0.1)

        proxy.restore()  # the database answers again: the worker consumes and runs the job
        assert _logged(worker, "the database answers again"), worker.log_text()[-3000:]
        job = jobs.wait(job_id, timeout=90)
        assert (job.status, job.attempts) == (JobStatus.succeeded, 1), (job.error_code, job.error_message)
    finally:
        pool.stop_all()


def _via_proxy(env: dict[str, str], proxy: CuttableProxy) -> str:
    url = urlsplit(env["GENQ_DATABASE_URL"])
    return url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl()


def test_a_claim_without_its_database_hands_the_message_back(
    worker_env: dict[str, str], jobs: JobClient, proxy: CuttableProxy, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The consumer gate does not ping again during the test (its interval is 10 minutes) and the sweeper
    would not republish for 5 minutes: only the rejected message can bring the job to a worker."""
    env = {
        **worker_env,
        "GENQ_DATABASE_URL": _via_proxy(worker_env, proxy),
        "GENQ_DATABASE_CHECK_SECONDS": "600",
        "GENQ_REQUEUE_AFTER_SECONDS": "300",
        "GENQ_PUBLISH_GRACE_SECONDS": "300",
    }
    pool = Workers(env, tmp_path / "logs")
    try:
        worker = pool.start()
        proxy.cut()
        job_id = jobs.insert(JobKind.train, _train_params())
        jobs.publish(job_id)
        assert _logged(worker, "message handed back to the broker"), worker.log_text()[-3000:]
        assert jobs.get(job_id).attempts == 0
        proxy.restore()
        job = jobs.wait(job_id, timeout=90)
        assert (job.status, job.attempts) == (JobStatus.succeeded, 1), (job.error_code, job.error_message)
    finally:
        pool.stop_all()


def test_a_message_the_broker_lost_is_published_again_within_seconds(
    worker_env: dict[str, str], jobs: JobClient, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The broker loses a dispatched job's message (a flush, a failover without persistence). The
    sweeper sees the job neither waiting in the queue lists nor held by a worker and holds it again once
    `publish_grace_seconds` have passed, though `requeue_after_seconds` is five minutes; the scheduler
    sends it anew."""
    job_id = jobs.insert(JobKind.train, _train_params())
    jobs.publish(job_id)
    assert _waiting_in_broker(jobs, job_id)
    client = redis.Redis.from_url(jobs.settings.broker_url)
    try:
        settings = jobs.settings
        client.delete(*queue_keys([settings.train_queue, settings.sample_queue], ":", range(10)))
    finally:
        client.close()
    assert not _waiting_in_broker(jobs, job_id)
    with jobs.sessions.begin() as session:  # as published a moment ago (the worker takes a while to start)
        session.execute(update(Job).where(Job.id == job_id).values(published_at=utcnow()))

    env = {**worker_env, "GENQ_REQUEUE_AFTER_SECONDS": "300", "GENQ_PUBLISH_GRACE_SECONDS": "2"}
    pool = Workers(env, tmp_path / "logs")
    try:
        worker = pool.start()
        job = jobs.wait(job_id, timeout=60)
        assert (job.status, job.attempts) == (JobStatus.succeeded, 1), (job.error_code, job.error_message)
        assert f"job {job_id} was dispatched but its message is not in the broker" in worker.log_text()
    finally:
        pool.stop_all()


def test_a_worker_that_lost_its_lease_stops_and_records_nothing(
    worker_env: dict[str, str], jobs: JobClient, proxy: CuttableProxy, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Issue 8's first reproduction: worker A's pool process is paused mid-training and its database cut
    off; worker B's sweeper requeues the job when A's lease expires and B finishes it. A, resumed, must
    stop at its next step (its lease ran out though no statement told it so) and record nothing."""
    b_pool = Workers(worker_env, tmp_path / "b")
    a_pool = Workers({**worker_env, "GENQ_DATABASE_URL": _via_proxy(worker_env, proxy)}, tmp_path / "a")
    try:
        b = b_pool.start()
        os.killpg(b.process.pid, signal.SIGSTOP)  # B takes nothing until A holds the job
        a = a_pool.start()
        [a_child] = re.findall(r"pool process (\d+) ready", a.log_text())
        params = {**_train_params(), "checkpoint_every_steps": 5}
        params["options"] = {**params["options"], "max_steps": 200}  # type: ignore[dict-item]
        job_id = jobs.submit(JobKind.train, params)
        jobs.wait_until(job_id, lambda job: (job.progress or {}).get("step", 0) >= 10, timeout=60)
        os.kill(int(a_child), signal.SIGSTOP)
        proxy.cut()
        os.killpg(b.process.pid, signal.SIGCONT)

        job = jobs.wait(job_id, timeout=120)
        assert (job.status, job.attempts) == (JobStatus.succeeded, 2), (job.error_code, job.error_message)
        winner = jobs.artifacts(job_id)

        os.kill(int(a_child), signal.SIGCONT)
        assert _logged(a, f"job {job_id} attempt 1 lost its lease"), a.log_text()[-3000:]
        assert _logged(a, "outputs are discarded"), a.log_text()[-3000:]
        assert f"job {job_id} attempt 1 succeeded" not in a.log_text()
        assert jobs.get(job_id).attempts == 2 and jobs.artifacts(job_id).keys() == winner.keys()
        store = S3Store(jobs.settings)
        for artifact in winner.values():  # every artifact still holds what its row says
            assert hashlib.sha256(store.get_bytes(artifact.key)).hexdigest() == artifact.sha256
    finally:
        for worker in b_pool.started:  # a stopped process would not see the SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, signal.SIGCONT)
        for worker in a_pool.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, signal.SIGCONT)
        a_pool.stop_all()
        b_pool.stop_all()


def test_a_storage_outage_requeues_the_job_instead_of_failing_it(
    worker_env: dict[str, str], jobs: JobClient, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    s3 = CuttableProxy(urlsplit(worker_env["GENQ_S3_ENDPOINT_URL"]).port or 80)
    env = {
        **worker_env,
        "GENQ_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3.port}",
        "GENQ_S3_MAX_ATTEMPTS": "2",
        "GENQ_PUBLISH_GRACE_SECONDS": "2",
    }
    pool = Workers(env, tmp_path / "logs")
    try:
        worker = pool.start()
        params = {**_train_params(), "checkpoint_every_steps": 5}
        params["options"] = {**params["options"], "max_steps": 150}  # type: ignore[dict-item]
        job_id = jobs.submit(JobKind.train, params)
        jobs.wait_until(job_id, lambda job: (job.progress or {}).get("step", 0) >= 5, timeout=60)
        s3.cut()  # the next checkpoint upload fails
        deadline = time.monotonic() + 60
        while not _logged(worker, "interrupted by an infrastructure fault"):
            assert time.monotonic() < deadline, worker.log_text()[-3000:]
            time.sleep(0.2)
        time.sleep(3)  # the attempt is held, its lease renewed, while storage stays down
        job = jobs.get(job_id)
        assert (job.status, job.attempts, job.error_code) == (JobStatus.running, 1, None), job.error_message

        s3.restore()  # the attempt gives the job back; the sweeper publishes it after the grace
        job = jobs.wait_until(job_id, lambda job: job.attempts == 2 or job.status != JobStatus.running, 60)
        assert job.error_code is None, job.error_message
        job = jobs.wait(job_id, timeout=90)
        assert (job.status, job.attempts) == (JobStatus.succeeded, 2), (job.error_code, job.error_message)
    finally:
        pool.stop_all()
        s3.cut()
