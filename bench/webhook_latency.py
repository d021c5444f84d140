"""Webhook delivery latency: from a job's completion (its row's finished_at) to the `job.completed` event
arriving at a receiver, beside the poll interval a client would need to learn of it as soon.

    python -m bench.webhook_latency               # 50 jobs, one at a time, then a burst of 50, ~2 minutes
    python -m bench.webhook_latency --jobs 20

Services as in bench/common.py (Postgres, Redis, moto's S3 server), one genq worker subprocess and the
webhook worker (`python -m worker.webhooks`'s command line), a receiver on 127.0.0.1 (tests/receiver.py,
answering 200 at once). A tiny VAE is trained first; then `generate count=1` jobs with a webhook
(`webhook_events: ["completed"]`) are submitted through the API's submission path (the Flask app in this
process), first one at a time (each waits for its event), then all at once (a burst: deliveries queue
behind each other and behind the worker's jobs). Every event's signature is verified. All processes share
the machine's clock.

A client that polls every P seconds learns of a completion P/2 later on average and P at worst; so the
poll interval matching the webhook's median is 2 x p50, and the one matching its p99 in the worst case
is p99, each costing (job duration / P) GETs per job.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import uuid

from sqlalchemy import select
from standardwebhooks import Webhook

from api.app import create_app
from bench.common import machine_line, make_tenant, services, summarize, train_tiny_model
from shared.db import session_factory
from shared.models import Job, Tenant
from shared.webhooks import rotate_secret
from tests.receiver import Received, Receiver

WEBHOOK_ENV = {
    "GENQ_WEBHOOK_ALLOW_HTTP": "true",
    "GENQ_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on 127.0.0.1
}


def completed_event(received: list[Received], job_id: str) -> Received | None:
    for request in received:
        data = json.loads(request.body)
        if data["type"] == "job.completed" and data["data"]["id"] == job_id:
            return request
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50, help="jobs in each phase")
    args = parser.parse_args(argv)
    print(f"genq webhook latency, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {machine_line()}", flush=True)
    began = time.monotonic()
    run = uuid.uuid4().hex[:8]
    with services({**WEBHOOK_ENV, "GENQ_WEBHOOK_QUEUE": f"genq.bench.{run}.webhooks"}) as found:
        found.extra_queues.append(found.settings.webhook_queue)
        (worker,) = found.start_workers(1)
        found.workers.start_webhooks()
        worker.wait_ready()
        tenant = make_tenant(found.settings)
        sessions = session_factory(found.settings.sql_url)
        with sessions.begin() as session:
            secret = rotate_secret(session, session.get(Tenant, tenant.id))  # type: ignore[arg-type]
        app = create_app(found.settings)
        client = app.test_client()
        receiver = Receiver().start()
        try:
            model_id = train_tiny_model(client.post, client.get, tenant)
            body = {
                "kind": "generate",
                "params": {"model_id": model_id, "count": 1},
                "webhook": receiver.url,
                "webhook_events": ["completed"],
            }

            def submit(seed: int) -> str:
                response = client.post(
                    "/v1/jobs",
                    json={**body, "params": {**body["params"], "seed": seed}},
                    headers=tenant.headers,
                )
                assert response.status_code == 202, response.json
                return response.json["id"]

            sequential = []
            for seed in range(args.jobs):
                job_id = submit(seed)
                receiver.wait_for(lambda r, j=job_id: completed_event(r, j) is not None, timeout=60)
                sequential.append(job_id)
            burst = [submit(10_000 + seed) for seed in range(args.jobs)]
            want = set(burst)
            receiver.wait_for(
                lambda r: want <= {json.loads(x.body)["data"]["id"] for x in r}, timeout=60 + 5 * args.jobs
            )
            received = list(receiver.received)
        finally:
            receiver.stop()
            app.extensions["genq"].celery.close()
        for request in received:
            Webhook(secret).verify(request.body, request.headers)  # raises on a bad signature
        with sessions() as session:
            rows = {
                str(row.id): row
                for row in session.scalars(
                    select(Job).where(Job.id.in_([uuid.UUID(j) for j in sequential + burst]))
                )
            }
        phases = {}
        for name, ids in (("one at a time", sequential), ("burst", burst)):
            latencies, durations = [], []
            for job_id in ids:
                row = rows[job_id]
                event = completed_event(received, job_id)
                assert event is not None and row.finished_at is not None and row.started_at is not None
                latencies.append(event.at - row.finished_at.timestamp())
                durations.append((row.finished_at - row.created_at).total_seconds())
            phases[name] = (summarize(latencies), summarize(durations))
        duplicates = len(received) - len({r.headers["webhook-id"] for r in received})
        print(f"{machine_line()}; total {time.monotonic() - began:.0f} s", flush=True)
    print(
        f"\n{args.jobs} generate jobs (count=1) per phase, webhook_events [completed], receiver on 127.0.0.1:"
    )
    for name, (latency, duration) in phases.items():
        print(f"  {name:<14} finished_at -> event at receiver  {latency.ms()}")
        print(f"  {'':<14} job submit -> finished             {duration.ms()}")
        print(
            f"  {'':<14} a poller matching it: every {2 * latency.p50 * 1e3:.0f} ms (mean staleness = p50), "
            f"every {latency.p99 * 1e3:.0f} ms (worst case = p99): "
            f"{duration.mean / (2 * latency.p50):.1f} and {duration.mean / latency.p99:.1f} GETs per job"
        )
    print(f"  signatures verified: {len(received)}; duplicate webhook-ids: {duplicates}")


if __name__ == "__main__":
    main()
