"""Queue overhead: how long a tiny generation job takes from submit to running and to succeeded, beside a
bare Celery task's round trip on the same broker, with the same worker settings, in the same run. The
genq path includes the scheduler: the API commits a held job and wakes it; it sends the message.

    python -m bench.queue_latency                 # 50 jobs and 50 bare tasks, under 3 minutes
    python -m bench.queue_latency --jobs 20

genq side: Postgres (a fresh database), Redis, moto's S3 server and one real worker subprocess
(`celery -A worker.celery_app worker -c 1`). A tiny VAE is trained through the API first, then jobs
`generate count=1` are submitted one at a time through the API's submission path (the Flask app in this
process, via its test client) and each is timed from the client's clock before the POST to the row's
started_at and finished_at (all processes share the machine's clock).

Bare side: the no-op task below, run by a worker subprocess of this module with genq's transport settings
and worker shape (prefork with spawn, concurrency 1, prefetch 1, late acks), sent with send_task; the task
pushes its start time onto a Redis list the client waits on. The two kinds alternate, one at a time, so
both see the same machine load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from kombu import Exchange, Queue
from sqlalchemy import select

from bench.common import (
    Services,
    machine_line,
    make_tenant,
    services,
    summarize,
    train_tiny_model,
)
from shared.db import session_factory
from shared.models import Job
from shared.queue import celery_priority, make_celery
from shared.settings import Settings
from shared.worker_launch import job_worker_argv
from tests.conftest import ROOT
from tests.integration.conftest import WorkerProcess

BARE_TASK = "genq.bench.noop"
BARE_QUEUE_ENV = "GENQ_BENCH_BARE_QUEUE"
WARMUP_BARE = 3
POLL_SECONDS = 0.02


# ---------------------------------------------------------------------------------------------------
# The bare side: one no-op task on genq's transport settings


def bare_celery(settings: Settings, queue: str) -> Celery:
    """genq's Celery transport (make_celery) and worker shape (worker/celery_app.py), one no-op task."""
    celery = make_celery(settings, name="genq-bench-bare")
    celery.conf.update(
        task_queues=[Queue(queue, Exchange(queue), routing_key=queue)],
        worker_pool="prefork",
        worker_pool_start_method="spawn",
        worker_concurrency=1,
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        worker_send_task_events=False,
    )
    clients: dict[str, redis.Redis] = {}

    @celery.task(name=BARE_TASK)
    def noop(done_key: str) -> None:
        started = time.time()
        if "redis" not in clients:
            clients["redis"] = redis.Redis.from_url(settings.broker_url)
        clients["redis"].rpush(done_key, repr(started))

    return celery


app = bare_celery(Settings(), os.environ.get(BARE_QUEUE_ENV, "genq.bench.bare"))  # `celery -A` finds it


def start_bare_worker(found: Services, queue: str) -> WorkerProcess:
    log = found.workdir / "bare-worker.log"
    command = job_worker_argv([queue], "bare@%h", app="bench.queue_latency")  # genq's worker shape
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **found.env, BARE_QUEUE_ENV: queue},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess("bare", process, log)
    found.workers.started.append(worker)  # stopped with the genq workers
    return worker


def wait_bare_ready(worker: WorkerProcess, timeout: float = 90) -> None:
    """The main process consumes (its pool child may still be starting: the warm-up tasks wait for it)."""
    deadline = time.monotonic() + timeout
    while " ready." not in worker.log_text():
        if worker.process.poll() is not None or time.monotonic() > deadline:
            exit_code = worker.process.poll()
            raise RuntimeError(f"bare worker not ready (exit {exit_code}):\n{worker.log_text()[-3000:]}")
        time.sleep(0.1)


def run_bare(client: Celery, broker: redis.Redis, queue: str, done_key: str) -> tuple[float, float]:
    """(send -> task started, send -> client sees it done) in seconds."""
    sent = time.time()
    client.send_task(BARE_TASK, args=[done_key], queue=queue, priority=celery_priority(0))
    reply = broker.blpop([done_key], timeout=30)
    seen = time.time()
    if reply is None:
        raise TimeoutError("the bare task did not run within 30 s")
    return float(reply[1]) - sent, seen - sent


# ---------------------------------------------------------------------------------------------------
# The genq side


@dataclass(frozen=True)
class JobTiming:
    job_id: str
    submitted: float  # client clock before the POST (epoch seconds)
    replied: float  # client clock when the POST's reply arrived


def submit_generate(client: Any, headers: dict[str, str], model_id: str, seed: int) -> JobTiming:
    body = {"kind": "generate", "params": {"model_id": model_id, "count": 1, "seed": seed}}
    submitted = time.time()
    response = client.post("/v1/jobs", json=body, headers=headers)
    replied = time.time()
    if response.status_code != 202:
        raise RuntimeError(f"submit refused: {response.status_code} {response.json}")
    return JobTiming(response.json["id"], submitted, replied)


def wait_finished(sessions: Any, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    query = select(Job.finished_at).where(Job.id == uuid.UUID(job_id))
    while time.monotonic() < deadline:
        with sessions() as session:
            if session.scalar(query) is not None:
                return
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"job {job_id} not finished after {timeout}s")


RECEIVED = re.compile(r"Task genq\.generate\[([0-9a-f-]+)\] received")
TEXT_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ")


def received_times(log_text: str) -> dict[str, float]:
    """job id -> when the worker's main process took the message off Redis, from Celery's log: JSON lines
    (the default, shared/logging.py) or text lines (GENQ_LOG_FORMAT=text, local time)."""
    times = {}
    for line in log_text.splitlines():
        found = RECEIVED.search(line)
        if found is None:
            continue
        if line.startswith("{"):
            stamp = dt.datetime.fromisoformat(json.loads(line)["time"]).timestamp()
        elif (text := TEXT_STAMP.match(line)) is not None:
            stamp = dt.datetime.strptime(text.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        else:
            continue
        times[found.group(1)] = stamp
    return times


# published_at is the scheduler's dispatch (marked just before the send), so the path from the API's
# commit to the worker splits at it.
SEGMENTS = (
    ("API: auth, validation, row built", "submitted", "created"),
    ("API commit, wake, scheduler pass, mark", "created", "published"),
    ("send; Redis -> worker main", "published", "received"),
    ("pool handoff + claim UPDATE", "received", "started"),
    ("model row + load + generate 1", "started", "generated"),
    ("PNG/shard/manifest/grid, 3 S3 PUTs, finish", "generated", "finished"),
)


def job_marks(timing: JobTiming, row: Job, received: dict[str, float]) -> dict[str, float]:
    """Epoch seconds of each step of one job, from the client, the row and the worker's log."""
    progress_start = dt.datetime.fromisoformat((row.progress or {})["started_at"])
    return {
        "submitted": timing.submitted,
        "created": row.created_at.timestamp(),
        "published": row.published_at.timestamp() if row.published_at else float("nan"),
        "received": received.get(timing.job_id, float("nan")),
        "started": row.started_at.timestamp(),
        "generated": progress_start.timestamp(),
        "finished": row.finished_at.timestamp(),
    }


def read_rows(sessions: Any, ids: list[str]) -> dict[str, Job]:
    with sessions() as session:
        rows = session.scalars(select(Job).where(Job.id.in_([uuid.UUID(i) for i in ids]))).all()
        return {str(row.id): row for row in rows}


# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50, help="measured generate jobs (and bare tasks)")
    parser.add_argument("--budget", type=float, default=170, help="seconds; the loop stops early past it")
    parser.add_argument("--gap", type=float, default=0.05, help="idle seconds between measurements")
    args = parser.parse_args(argv)
    began = time.monotonic()
    deadline = began + args.budget
    print(f"genq queue overhead, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {machine_line()}", flush=True)

    from api.app import create_app  # here: the bare worker imports this module and needs no API

    with services() as found:
        bare_queue = f"{found.settings.sample_queue}.bare"
        done_key = f"{bare_queue}.done"
        found.extra_queues.append(bare_queue)
        found.extra_keys.append(done_key)
        genq_worker = found.start_workers(1)[0]
        bare_worker = start_bare_worker(found, bare_queue)
        genq_worker.wait_ready()
        wait_bare_ready(bare_worker)
        print(f"workers ready after {time.monotonic() - began:.1f} s", flush=True)

        api = create_app(found.settings)
        client = api.test_client()
        tenant = make_tenant(found.settings)
        sessions = session_factory(found.settings.sql_url)
        sender = make_celery(found.settings, name="genq-bench-client")
        try:
            trained_at = time.monotonic()
            model_id = train_tiny_model(client.post, client.get, tenant)
            print(f"tiny VAE trained through the API in {time.monotonic() - trained_at:.1f} s", flush=True)

            for _ in range(WARMUP_BARE):
                run_bare(sender, found.broker, bare_queue, done_key)
            cold = submit_generate(client, tenant.headers, model_id, seed=10_000)
            wait_finished(sessions, cold.job_id)

            timings: list[JobTiming] = []
            bare: list[tuple[float, float]] = []
            for i in range(args.jobs):
                if time.monotonic() > deadline:
                    print(f"budget reached: {i} of {args.jobs} measured", flush=True)
                    break
                time.sleep(args.gap)
                timings.append(submit_generate(client, tenant.headers, model_id, seed=i))
                wait_finished(sessions, timings[-1].job_id)
                time.sleep(args.gap)
                bare.append(run_bare(sender, found.broker, bare_queue, done_key))
            rows = read_rows(sessions, [t.job_id for t in [cold, *timings]])
            received = received_times(genq_worker.log_text())
        finally:
            sender.close()
            api.extensions["genq"].celery.close()
        report(cold, timings, bare, rows, received)
        print(f"{machine_line()}; total {time.monotonic() - began:.0f} s", flush=True)


def report(
    cold: JobTiming,
    timings: list[JobTiming],
    bare: list[tuple[float, float]],
    rows: dict[str, Job],
    received: dict[str, float],
) -> None:
    failed = [t for t in timings if rows[t.job_id].status != "succeeded"]
    if failed or rows[cold.job_id].status != "succeeded":
        example = rows[(failed or [cold])[0].job_id]
        reason = f"{example.error_code}: {example.error_message}"
        raise RuntimeError(f"{len(failed)} measured jobs (or the first) did not succeed, e.g. {reason}")
    marks = [job_marks(t, rows[t.job_id], received) for t in timings]
    running = summarize([m["started"] - m["submitted"] for m in marks])
    succeeded = summarize([m["finished"] - m["submitted"] for m in marks])
    replied = summarize([t.replied - t.submitted for t in timings])
    bare_ran = summarize([b[0] for b in bare])
    bare_seen = summarize([b[1] for b in bare])
    cold_marks = job_marks(cold, rows[cold.job_id], received)
    cold_running, cold_done = (cold_marks[m] - cold.submitted for m in ("started", "finished"))
    print(
        f"\nfirst generate job (model not cached yet): running +{cold_running * 1e3:.1f} ms,"
        f" succeeded +{cold_done * 1e3:.1f} ms"
    )
    print(f"\n{len(timings)} generate jobs (count=1), one at a time, through POST /v1/jobs:")
    print(f"  submit -> running      {running.ms()}")
    print(f"  submit -> succeeded    {succeeded.ms()}")
    print(f"  POST /v1/jobs reply    {replied.ms()}")
    print(f"{len(bare)} bare Celery tasks (no-op), same broker, same worker settings:")
    print(f"  send -> task started   {bare_ran.ms()}")
    print(f"  send -> done seen      {bare_seen.ms()}")
    print("ratio genq / bare:")
    print(f"  submit -> running   / send -> started:  p50 {running.p50 / bare_ran.p50:5.1f}x"
          f"  p99 {running.p99 / bare_ran.p99:5.1f}x")  # fmt: skip
    print(f"  submit -> succeeded / send -> done:     p50 {succeeded.p50 / bare_seen.p50:5.1f}x"
          f"  p99 {succeeded.p99 / bare_seen.p99:5.1f}x")  # fmt: skip
    print("where a warm genq job's time goes (client clock, the row's timestamps, the worker's log):")
    for label, start, end in SEGMENTS:
        spans = summarize([m[end] - m[start] for m in marks])
        print(f"  {label:<44} {spans.ms()}")
    cold_load = cold_marks["generated"] - cold_marks["started"]
    print(f"  (first job, model row + load + generate: {cold_load * 1e3:.1f} ms, checkpoint download in it)")


if __name__ == "__main__":
    main()
