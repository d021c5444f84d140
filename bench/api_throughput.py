"""API throughput under gunicorn, on Postgres, Redis and moto's S3 server, each beside a baseline taken in
the same run:

(a) status polls: K concurrent clients GET /v1/jobs/{id} (a succeeded job with four artifacts, so each
    reply carries four presigned URLs), then the same poll answered 304 through If-None-Match, for a fixed
    time, for a few gunicorn worker/thread settings; beside GET /healthz on the same server (no database,
    no auth).
(b) a 10,000-item batch: POST /v1/batches (a generate template + 10,000 seeds) over HTTP; beside the bare
    cost of the same rows: one executemany INSERT of 10,000 job rows (psycopg, one transaction) and 10,000
    Redis LPUSH of a message of the same size, pipelined 1,000 at a time like the API's publisher.
(c) long polls: many clients waiting with `?wait=30` on one API process, /healthz beside them.
(d) in-process A/B: a 304 answered from the per-process tag cache beside the same 304 read from the
    row, and a template batch's items derived from its template beside validating every item.

    python -m bench.api_throughput
    python -m bench.api_throughput --seconds 10 --clients 16 --configs "-w 2" "-w 2 --threads 4"
    python -m bench.api_throughput --parts ab

Load comes from `wrk` when it is installed (apt-get install wrk), else from Python threads (one
requests.Session each), which on a small machine measure the client as much as the server. The clients
share the machine with the server.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import requests
from psycopg.types.json import Jsonb

from bench.common import ApiTenant, Services, machine_line, make_tenant, percentile, services
from shared.db import session_factory
from shared.models import Artifact, Job, JobStatus, TrainedModel, utcnow
from shared.queue import make_celery, queue_for
from shared.specs import BatchSubmission, Family, GenerateParams, JobKind
from tests.conftest import ROOT, free_port, wait_for_port
from worker.dispatch import CeleryPublisher, JobMessage

DEFAULT_CONFIGS = ("-w 2", "-w 2 --threads 4", "-w 4")
BATCH_CONFIG = "-w 2"
BATCH_ITEMS = 10_000
PIPELINE = 1000  # api/publisher.py PIPELINE_SIZE
RATE_LIMIT = "1000000/second"
PARTS = ("polls", "waiters", "batches", "ab")
ARTIFACTS = ("grid.png", "manifest.json", "shards/00000.tar", "shards/00001.tar")


# ---------------------------------------------------------------------------------------------------
# Fixtures in SQL: what a training job and a finished generate job leave behind


def add_model_and_job(found: Services, tenant: ApiTenant) -> tuple[str, str]:
    """A registered VAE (its checkpoint is never read here) and a succeeded generate job with artifacts."""
    now = utcnow()
    with session_factory(found.settings.sql_url).begin() as session:
        model = TrainedModel(
            tenant_id=tenant.id, family=Family.vae, name="bench-vae", version=1, dataset="digits",
            image_size=28, channels=1, num_classes=10, class_names=[str(i) for i in range(10)],
            checkpoint_key=f"tenants/{tenant.id}/models/bench/model.pt", checkpoint_sha256="0" * 64,
        )  # fmt: skip
        session.add(model)
        session.flush()
        job = Job(
            tenant_id=tenant.id, kind=JobKind.generate, queue=queue_for(JobKind.generate, found.settings),
            params=GenerateParams(model_id=model.id, count=2000).model_dump(mode="json"),
            status=JobStatus.succeeded, attempts=1, result={"count": 2000, "model_id": str(model.id)},
            progress={"phase": "generate", "step": 2000, "total": 2000},
            created_at=now, published_at=now, started_at=now, finished_at=now,
        )  # fmt: skip
        session.add(job)
        session.flush()
        for name in ARTIFACTS:
            key = f"tenants/{tenant.id}/jobs/{job.id}/{name}"
            session.add(
                Artifact(
                    job_id=job.id, tenant_id=tenant.id, name=name, key=key,
                    content_type="application/octet-stream", size=1234, sha256="0" * 64,
                )
            )  # fmt: skip
        return str(model.id), str(job.id)


# ---------------------------------------------------------------------------------------------------
# gunicorn


@dataclass(frozen=True)
class Server:
    base: str  # http://127.0.0.1:<port>
    pid: int  # the gunicorn master


@contextmanager
def gunicorn(found: Services, config: str, log: Path) -> Iterator[Server]:
    """`gunicorn <config> api.wsgi:app` on a free port, serving when yielded, stopped afterwards."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", *config.split(), "--timeout", "300",
        "--bind", f"127.0.0.1:{port}", "api.wsgi:app",
    ]  # fmt: skip
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **found.env}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_port(port, timeout=60, process=process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while requests.get(f"{base}/healthz", timeout=30).status_code != 200:  # a worker has booted
            if time.monotonic() > deadline:
                raise TimeoutError(f"gunicorn {config} not serving:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield Server(base, process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def server_cpu_seconds(master_pid: int) -> float:
    """user + system CPU of a gunicorn master's live workers (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    total = 0
    for pid in children:
        with suppress(FileNotFoundError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


# ---------------------------------------------------------------------------------------------------
# Load


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    rps: float
    p50: float  # seconds
    p99: float
    server_cpu: float = 0.0  # seconds of gunicorn worker CPU during the run


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _duration(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * UNITS[unit]


def load_wrk(url: str, headers: dict[str, str], clients: int, seconds: float) -> LoadResult:
    command = ["wrk", "-t", "2", "-c", str(clients), "-d", f"{seconds:g}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)$", out, re.M))
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return LoadResult(total, errors, rps, _duration(latency["50"]), _duration(latency["99"]))


def load_threads(url: str, headers: dict[str, str], clients: int, seconds: float) -> LoadResult:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    deadline = time.monotonic() + seconds

    def poll(i: int) -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                status = session.get(url, headers=headers, timeout=10).status_code
                latencies[i].append(time.perf_counter() - started)
                errors[i] += status >= 400

    threads = [threading.Thread(target=poll, args=(i,)) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 30)
    elapsed = time.monotonic() - began
    flat = [x for each in latencies for x in each]
    return LoadResult(len(flat), sum(errors), len(flat) / elapsed, percentile(flat, 50), percentile(flat, 99))


def load(server: Server, path: str, headers: dict[str, str], clients: int, seconds: float) -> LoadResult:
    runner = load_wrk if shutil.which("wrk") else load_threads
    before = server_cpu_seconds(server.pid)
    result = runner(server.base + path, headers, clients, seconds)
    return replace(result, server_cpu=server_cpu_seconds(server.pid) - before)


def describe(label: str, result: LoadResult) -> str:
    errors = f", {result.errors} errors" if result.errors else ""
    p50, p99 = result.p50 * 1e3, result.p99 * 1e3
    cpu = result.server_cpu / max(result.requests, 1) * 1e3
    return (
        f"  {label:<18} {result.rps:6.0f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
        f"  server CPU {cpu:5.2f} ms/req  ({result.requests} requests{errors})"
    )


def poll_benchmark(found: Services, tenant: ApiTenant, job_id: str, args: argparse.Namespace) -> None:
    client = "wrk -t 2" if shutil.which("wrk") else "Python threads"
    print(f"\n(a) status polls: {args.clients} concurrent clients ({client}), {args.seconds:g} s each")
    for config in args.configs:
        with gunicorn(found, config, found.workdir / "gunicorn.log") as server:
            status_path = f"/v1/jobs/{job_id}"
            reply = requests.get(server.base + status_path, headers=tenant.headers, timeout=30)
            assert reply.status_code == 200 and len(reply.json()["artifacts"]) == len(ARTIFACTS), reply.text
            load(server, "/healthz", {}, args.clients, 1)  # warm every worker and connection pool
            load(server, status_path, tenant.headers, args.clients, 1)
            unchanged = {**tenant.headers, "If-None-Match": reply.headers["ETag"]}
            assert requests.get(server.base + status_path, headers=unchanged, timeout=30).status_code == 304
            health = load(server, "/healthz", {}, args.clients, args.seconds)
            status = load(server, status_path, tenant.headers, args.clients, args.seconds)
            not_modified = load(server, status_path, unchanged, args.clients, args.seconds)
        print(f" gunicorn {config}:")
        print(describe("GET /healthz", health))
        print(describe("GET /v1/jobs/{id}", status))
        print(describe("  ... 304", not_modified))
        for label, result in (("status", status), ("304", not_modified)):
            cpu_ratio = (result.server_cpu / result.requests) / (health.server_cpu / health.requests)
            print(
                f"  {label} / healthz: {result.rps / health.rps:.2f}x the throughput,"
                f" {result.p50 / health.p50:.1f}x the p50 latency, {cpu_ratio:.1f}x the server CPU per"
                " request"
            )


def waiter_benchmark(found: Services, tenant: ApiTenant, job_id: str, args: argparse.Namespace) -> None:
    """How many `?wait=` long polls one API process holds, and what they cost the polls beside them."""
    config = f"-w 1 --threads {args.waiters + 4}"
    print(f"\n(c) {args.waiters} clients waiting with ?wait=30 on one gunicorn process ({config})")
    with gunicorn(found, config, found.workdir / "gunicorn-wait.log") as server:
        url = f"{server.base}/v1/jobs/{job_id}?wait=30"
        etag = requests.get(url.split("?")[0], headers=tenant.headers, timeout=30).headers["ETag"]
        headers = {**tenant.headers, "If-None-Match": etag}
        done: list[int] = []
        before = server_cpu_seconds(server.pid)

        def wait_once() -> None:
            with requests.Session() as session:
                done.append(session.get(url, headers=headers, timeout=60).status_code)

        threads = [threading.Thread(target=wait_once) for _ in range(args.waiters)]
        for thread in threads:
            thread.start()
        time.sleep(3)  # every waiter is parked in the API by now
        health = load(server, "/healthz", {}, 2, args.seconds)
        for thread in threads:
            thread.join(timeout=60)
        cpu = server_cpu_seconds(server.pid) - before - health.server_cpu
    print(describe("GET /healthz", health) + "  (beside the waiters)")
    codes = {code: done.count(code) for code in set(done)}
    print(f"  {len(done)} waits ended {codes}; server CPU for all of them {cpu * 1e3:.0f} ms")


# ---------------------------------------------------------------------------------------------------
# Batch submission


def submit_batch(base: str, tenant: ApiTenant, model_id: str, offset: int) -> tuple[float, str]:
    body = {
        "template": {"kind": "generate", "params": {"model_id": model_id, "count": 1}},
        "seeds": list(range(offset, offset + BATCH_ITEMS)),
    }
    started = time.perf_counter()
    reply = requests.post(f"{base}/v1/batches", json=body, headers=tenant.headers, timeout=300)
    elapsed = time.perf_counter() - started
    if reply.status_code != 202 or len(reply.json()["job_ids"]) != BATCH_ITEMS:
        raise RuntimeError(f"batch refused: {reply.status_code} {reply.text[:500]}")
    return elapsed, reply.json()["id"]


def bare_insert(found: Services, tenant: ApiTenant, model_id: str, offset: int) -> float:
    """One executemany of BATCH_ITEMS job rows as the API writes them (after a batch row), one commit."""
    url = found.settings.sql_url.replace("postgresql+psycopg://", "postgresql://")
    queue = queue_for(JobKind.generate, found.settings)
    now = dt.datetime.now(dt.UTC)
    batch_id = uuid.uuid4()
    params = [GenerateParams(model_id=model_id, count=1, seed=offset + i) for i in range(BATCH_ITEMS)]
    created = [now + dt.timedelta(microseconds=i) for i in range(BATCH_ITEMS)]
    fixed = ("queued", queue, 0, 0)  # status, queue, priority, attempts
    # (id, tenant_id, kind, params, status, queue, priority, attempts, created_at, updated_at, batch_id)
    rows = [
        (uuid.uuid4(), tenant.id, "generate", Jsonb(p.model_dump(mode="json")), *fixed, c, now, batch_id)
        for p, c in zip(params, created, strict=True)
    ]
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        with conn.cursor() as cursor:
            cursor.execute(
                "INSERT INTO batches (id, tenant_id, total, created_at) VALUES (%s, %s, %s, %s)",
                (batch_id, tenant.id, BATCH_ITEMS, now),
            )
            cursor.executemany(
                "INSERT INTO jobs (id, tenant_id, kind, params, status, queue, priority, attempts,"
                " created_at, updated_at, batch_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
        conn.commit()
        return time.perf_counter() - started


def bare_lpush(found: Services, message: bytes) -> float:
    """BATCH_ITEMS LPUSH of `message` to a scratch list, PIPELINE per round trip."""
    key = f"{found.settings.sample_queue}.bare-lpush"
    found.extra_keys.append(key)
    started = time.perf_counter()
    for _ in range(0, BATCH_ITEMS, PIPELINE):
        pipe = found.broker.pipeline(transaction=False)
        for _ in range(PIPELINE):
            pipe.lpush(key, message)
        pipe.execute()
    elapsed = time.perf_counter() - started
    found.broker.delete(key)
    return elapsed


def queued_message(found: Services, job_id: str) -> bytes:
    """One job message as the scheduler sends it (the bare pushes use its size), then the sample queue
    emptied. The API holds a batch's jobs in SQL and sends none itself; no scheduler runs here."""
    celery = make_celery(found.settings, name="genq-bench")
    try:
        CeleryPublisher(celery, found.settings)([JobMessage(job_id, JobKind.generate, 0)])
    finally:
        celery.close()
    keys = found.broker.keys(f"{found.settings.sample_queue}*")
    message = next(found.broker.lindex(k, 0) for k in keys if found.broker.type(k) == b"list")
    found.broker.delete(*keys)
    return message


def batch_benchmark(found: Services, tenant: ApiTenant, model_id: str, repeats: int) -> None:
    print(f"\n(b) {BATCH_ITEMS:,}-item batch, POST /v1/batches (gunicorn {BATCH_CONFIG}), {repeats} times:")
    api, cpu, inserts, pushes = [], [], [], []
    with gunicorn(found, BATCH_CONFIG, found.workdir / "gunicorn-batch.log") as server:
        for i in range(repeats):
            before = server_cpu_seconds(server.pid)
            elapsed, batch_id = submit_batch(server.base, tenant, model_id, offset=2 * i * BATCH_ITEMS)
            cpu.append(server_cpu_seconds(server.pid) - before)
            api.append(elapsed)
            message = queued_message(found, batch_id)
            inserts.append(bare_insert(found, tenant, model_id, offset=(2 * i + 1) * BATCH_ITEMS))
            pushes.append(bare_lpush(found, message))
    api_s, cpu_s, insert_s, push_s = (percentile(xs, 50) for xs in (api, cpu, inserts, pushes))
    bare = percentile([a + b for a, b in zip(inserts, pushes, strict=True)], 50)
    runs = ", ".join(f"{x:.2f}" for x in api)
    print(f"  API batch submit         median {api_s:6.2f} s  (runs {runs}; server CPU {cpu_s:.2f} s)")
    print(f"  bare executemany INSERT  median {insert_s:6.2f} s")
    print(f"  bare LPUSH x{BATCH_ITEMS:,}        median {push_s:6.2f} s  ({len(message)}-byte messages)")
    print(f"  API / bare (INSERT + LPUSH): {api_s / bare:.1f}x; {api_s / BATCH_ITEMS * 1e6:.0f} us per item")


# ---------------------------------------------------------------------------------------------------
# In-process A/B: each hot path with and without its shortcut, alternating in one process


def _cpu_per_call(call: Callable[[], object], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - started) / n


def ab_benchmark(
    found: Services, tenant: ApiTenant, model_id: str, job_id: str, args: argparse.Namespace
) -> None:
    """The 304 answered from the tag cache vs from the row (the entry dropped before each poll), and a
    template batch's items derived from the template vs validated one by one (as before), through the
    Flask test client in this process (its CPU only: Postgres's share of a read is not counted)."""
    # Imported here, so the other parts also run from a tree that predates these functions (a "before").
    from api.app import create_app
    from api.submission import _prepare_batch, _prepare_each
    from api.validation import parse

    print(f"\n(d) in-process A/B, {args.rounds} alternating rounds, median CPU per call:")
    app = create_app(found.settings, wake=lambda queues: None)
    context = app.extensions["genq"]
    client = app.test_client()
    url = f"/v1/jobs/{job_id}"
    etag = client.get(url, headers=tenant.headers).headers["ETag"]
    deadline = time.monotonic() + 30
    while not context.waiters._subscribed.is_set():  # the tag cache is live once Redis confirms
        assert time.monotonic() < deadline, "no change subscription"
        time.sleep(0.01)
    unchanged = {**tenant.headers, "If-None-Match": etag}

    def cached() -> None:
        assert client.get(url, headers=unchanged).status_code == 304

    def from_row() -> None:
        context.waiters.tags.invalidate(job_id)  # as if the job had just been notified as changed
        assert client.get(url, headers=unchanged).status_code == 304

    body = {
        "template": {"kind": "generate", "params": {"model_id": model_id, "count": 1}},
        "seeds": list(range(BATCH_ITEMS)),
    }
    batch = parse(BatchSubmission, body)
    assert _prepare_batch(batch)[0] == _prepare_each(batch, batch.expand(), ["template."] * BATCH_ITEMS)[0]
    pairs = (
        ("304, tag cache", cached, "304, row read", from_row, args.polls, 1e3, "ms"),
        (
            f"template batch ({BATCH_ITEMS:,}), derived",
            lambda: _prepare_batch(batch),
            "validated per item",
            lambda: _prepare_each(batch, batch.expand(), ["template."] * BATCH_ITEMS),
            1,
            1.0,
            "s",
        ),
    )
    try:
        for new_label, new, old_label, old, n, scale, unit in pairs:
            new(), old()  # warm
            news, olds = [], []
            for _ in range(args.rounds):
                news.append(_cpu_per_call(new, n))
                olds.append(_cpu_per_call(old, n))
            new_cpu, old_cpu = percentile(news, 50), percentile(olds, 50)
            print(
                f"  {new_label:<32} {new_cpu * scale:8.3f} {unit}   {old_label:<20}"
                f" {old_cpu * scale:8.3f} {unit}   {old_cpu / new_cpu:5.1f}x less CPU"
            )
        started = time.process_time()
        parse(BatchSubmission, body)
        print(
            f"  (parsing the {BATCH_ITEMS:,}-seed batch body itself: {time.process_time() - started:.3f} s)"
        )
    finally:
        context.celery.close()
        context.notifier.close()


# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="load duration per endpoint and setting")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="gunicorn settings")
    parser.add_argument("--batches", type=int, default=3, help="10,000-item batches to time")
    parser.add_argument("--waiters", type=int, default=60, help="concurrent ?wait= clients to hold")
    parser.add_argument("--polls", type=int, default=500, help="polls per in-process A/B round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating in-process A/B rounds")
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run: (a), (c), (b), (d)"
    )
    args = parser.parse_args(argv)
    began = time.monotonic()
    print(f"genq API throughput, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {machine_line()}", flush=True)
    # The per-key request limit stays on (its counting in Redis is part of every request) but far above
    # what this machine can serve: the default (50/s) would answer most polls 429.
    with services({"GENQ_RATE_LIMIT": RATE_LIMIT}) as found:
        tenant = make_tenant(found.settings)
        model_id, job_id = add_model_and_job(found, tenant)
        if "polls" in args.parts:
            poll_benchmark(found, tenant, job_id, args)
        if "waiters" in args.parts:
            waiter_benchmark(found, tenant, job_id, args)
        if "batches" in args.parts:
            batch_benchmark(found, tenant, model_id, args.batches)
        if "ab" in args.parts:
            ab_benchmark(found, tenant, model_id, job_id, args)
    print(f"\n{machine_line()}; total {time.monotonic() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
