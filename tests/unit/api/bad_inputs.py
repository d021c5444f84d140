"""Bad requests for every endpoint, shared by the unit test (SQLite) and the integration test (Postgres).

Each case names the status and, where the request has one, the field the error must name.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from typing import Any

from flask.testing import FlaskClient

from shared.storage import LocalStore

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


@dataclasses.dataclass
class Case:
    method: str
    path: str
    status: int
    field: str | None = None
    json: Any = None
    data: Any = None  # raw body
    content_type: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    auth: bool = True
    s3_status: int | None = None  # the status when the API runs on S3 storage, if different


def _gen(**params: Any) -> dict[str, Any]:
    """Generate params (with an unknown model); a None value leaves that field out."""
    merged = {"model_id": str(uuid.uuid4()), "count": 1, **params}
    return {"kind": "generate", "params": {k: v for k, v in merged.items() if v is not None}}


def _train(**params: Any) -> dict[str, Any]:
    return {"kind": "train", "params": {"family": "cnn", **params}}


def _named(name: str) -> str:
    """A raw train body whose model name holds `name` verbatim (JSON escapes included)."""
    return '{"kind": "train", "params": {"family": "cnn", "name": "' + name + '"}}'


def _auth(value: str) -> dict[str, str]:
    return {"Authorization": value}


def _key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def _tpl(**extra: Any) -> dict[str, Any]:
    return {"template": _gen(), **extra}


def bad_requests(model_id: uuid.UUID) -> list[Case]:
    """`model_id`: a GAN of the requesting tenant (so reference checks pass where the case is about
    something else)."""
    gen = {"kind": "generate", "params": {"model_id": str(model_id), "count": 1}}
    junk_cursor = base64.urlsafe_b64encode(b'{"t": "yesterday", "id": 3}').decode()
    nested = "[" * 100_000 + "]" * 100_000
    zero_count = {"template": _gen(count=0), "seeds": [1]}
    jobs = [
        Case("post", "/v1/jobs", 422, "kind", json={}),
        Case("post", "/v1/jobs", 422, "kind", json={"kind": "paint", "params": {}}),
        Case("post", "/v1/jobs", 422, "kind", json={"kind": 7, "params": {}}),
        Case("post", "/v1/jobs", 422, "params", json={"kind": "train"}),
        Case("post", "/v1/jobs", 422, "params", json={"kind": "train", "params": [1, 2]}),
        Case("post", "/v1/jobs", 422, "params", json={"kind": "train", "params": "cnn"}),
        Case("post", "/v1/jobs", 422, "priority", json={**gen, "priority": 10**30}),
        Case("post", "/v1/jobs", 422, "priority", json={**gen, "priority": "high"}),
        Case("post", "/v1/jobs", 422, "priority", json={**gen, "priority": 1.5}),
        Case("post", "/v1/jobs", 422, "priority", json={**gen, "priority": -1}),
        Case("post", "/v1/jobs", 422, "extra", json={**gen, "extra": 1}),
        Case("post", "/v1/jobs", 422, "params.family", json={"kind": "train", "params": {}}),
        Case("post", "/v1/jobs", 422, "params.family", json=_train(family="rnn")),
        Case("post", "/v1/jobs", 422, "params.dataset", json=_train(dataset="../../etc/passwd")),
        Case("post", "/v1/jobs", 422, "params.options.width", json=_train(options={"width": "wide"})),
        Case("post", "/v1/jobs", 422, "params.options.bogus", json=_train(options={"bogus": 1})),
        Case("post", "/v1/jobs", 422, "params.options.lr", json=_train(options={"lr": 1e300})),
        Case("post", "/v1/jobs", 422, "params.name", json=_train(name="x" * 201)),
        Case("post", "/v1/jobs", 422, "params.model_id", json=_gen(model_id="not-a-uuid")),
        Case("post", "/v1/jobs", 422, "params.model_id", json=_gen(model_id=12)),
        Case("post", "/v1/jobs", 422, "params.count", json=_gen(count=10**12)),
        Case("post", "/v1/jobs", 422, "params.count", json=_gen(count="many")),
        Case("post", "/v1/jobs", 422, "params.count", json=_gen(count=None)),
        Case("post", "/v1/jobs", 422, "params.seeds", json=_gen(count=2, seeds=[1])),
        Case("post", "/v1/jobs", 422, "params.seed", json=_gen(seed=2**64)),
        Case("post", "/v1/jobs", 422, "params.labels.0", json=_gen(count=1, labels=[-1])),
        Case("post", "/v1/jobs", 422, "params.mask",
             json={"kind": "edit", "params": {"model_id": str(model_id), "operation": "inpaint",
                                              "source": {"indices": [1]}}}),
        Case("post", "/v1/jobs", 422, "params.source.indices",
             json={"kind": "edit", "params": {"model_id": str(model_id), "operation": "invert",
                                              "source": {"indices": []}}}),
        Case("post", "/v1/jobs", 422, "params.num_samples",
             json={"kind": "evaluate", "params": {"model_id": str(model_id), "num_samples": 1}}),
        Case("post", "/v1/jobs", 404, "params.model_id", json=_gen()),
        Case("post", "/v1/jobs", 400, None, data="{not json", content_type=JSON),
        Case("post", "/v1/jobs", 400, None, data='{"kind": NaN}', content_type=JSON),
        Case("post", "/v1/jobs", 400, None, data='{"kind": "train", "x": 1e999}', content_type=JSON),
        Case("post", "/v1/jobs", 400, None, data=_named("a\\u0000b"), content_type=JSON),
        Case("post", "/v1/jobs", 400, None, data=_named("\\ud800"), content_type=JSON),
        Case("post", "/v1/jobs", 400, None, data=nested, content_type=JSON),
        Case("post", "/v1/jobs", 400, None, data='{"a": ' + "9" * 5000 + "}", content_type=JSON),
        Case("post", "/v1/jobs", 400, None, json=[gen]),
        Case("post", "/v1/jobs", 400, None, data=b"\xff\xfe\x00", content_type=JSON),
        Case("post", "/v1/jobs", 415, None, data="kind=train", content_type=FORM),
        Case("post", "/v1/jobs", 415, None, data="", content_type=None),
        Case("post", "/v1/jobs", 400, "Idempotency-Key", json=gen, headers=_key("k" * 201)),
        Case("post", "/v1/jobs", 400, "Idempotency-Key", json=gen, headers=_key("ключ")),
        Case("post", "/v1/jobs", 401, None, json=gen, auth=False),
        Case("post", "/v1/jobs", 401, None, json=gen, headers=_auth("Bearer gq_nope_nope"), auth=False),
        Case("post", "/v1/jobs", 401, None, json=gen, headers=_auth("Basic dXNlcjpwYXNz"), auth=False),
        Case("delete", "/v1/jobs", 405),
        Case("put", "/v1/jobs", 405, json=gen),
        Case("get", "/v1/jobs?status=done", 400, "status"),
        Case("get", "/v1/jobs?status=queued,", 400, "status"),
        Case("get", "/v1/jobs?kind=paint", 400, "kind"),
        Case("get", "/v1/jobs?batch=12", 400, "batch"),
        Case("get", "/v1/jobs?limit=0", 400, "limit"),
        Case("get", "/v1/jobs?limit=501", 400, "limit"),
        Case("get", "/v1/jobs?limit=-1", 400, "limit"),
        Case("get", "/v1/jobs?limit=ten", 400, "limit"),
        Case("get", "/v1/jobs?limit=99999999999999999999", 400, "limit"),
        Case("get", "/v1/jobs?cursor=%%%", 400, "cursor"),
        Case("get", "/v1/jobs?cursor=abc", 400, "cursor"),
        Case("get", f"/v1/jobs?cursor={junk_cursor}", 400, "cursor"),
        Case("get", "/v1/jobs", 401, None, auth=False),
        Case("get", "/v1/jobs/not-a-uuid", 404, "job_id"),
        Case("get", "/v1/jobs/" + "9" * 5000, 404, "job_id"),
        Case("get", f"/v1/jobs/{uuid.uuid4()}", 404, "job_id"),
        Case("delete", f"/v1/jobs/{uuid.uuid4()}", 405),
        Case("post", f"/v1/jobs/{uuid.uuid4()}", 405, json=gen),
        Case("post", "/v1/jobs/not-a-uuid/cancel", 404, "job_id"),
        Case("post", f"/v1/jobs/{uuid.uuid4()}/cancel", 404, "job_id"),
        Case("get", f"/v1/jobs/{uuid.uuid4()}/cancel", 405),
    ]  # fmt: skip
    batches = [
        Case("post", "/v1/batches", 422, "body", json={}),
        Case("post", "/v1/batches", 422, "items", json={"items": []}),
        Case("post", "/v1/batches", 422, "items", json={"items": gen}),
        Case("post", "/v1/batches", 422, "items", json={"items": [gen] * 10_001}),
        Case("post", "/v1/batches", 422, "items.0.kind", json={"items": [{"kind": "x", "params": {}}]}),
        Case("post", "/v1/batches", 422, "items.1.params.count", json={"items": [gen, _gen(count=0)]}),
        Case("post", "/v1/batches", 404, "items.1.params.model_id", json={"items": [gen, _gen()]}),
        Case("post", "/v1/batches", 422, "template", json={"template": gen}),
        Case("post", "/v1/batches", 422, "seeds.0", json=_tpl(seeds=["one"])),
        Case("post", "/v1/batches", 422, "seeds", json=_tpl(seeds=list(range(10_001)))),
        Case("post", "/v1/batches", 422, "labels.0", json=_tpl(labels=[5000])),
        Case("post", "/v1/batches", 422, "labels", json=_tpl(seeds=[1, 2], labels=[1])),
        Case("post", "/v1/batches", 422, "priority", json=_tpl(seeds=[1], priority=99)),
        Case("post", "/v1/batches", 422, "template.params.count", json=zero_count),
        Case("post", "/v1/batches", 400, None, data="[", content_type=JSON),
        Case("post", "/v1/batches", 415, None, data="x", content_type="text/plain"),
        Case("post", "/v1/batches", 400, "Idempotency-Key", json=_tpl(seeds=[1]), headers=_key("")),
        Case("post", "/v1/batches", 401, None, json=_tpl(seeds=[1]), auth=False),
        Case("get", "/v1/batches", 405),
        Case("get", "/v1/batches/xyz", 404, "batch_id"),
        Case("get", f"/v1/batches/{uuid.uuid4()}", 404, "batch_id"),
        Case("post", "/v1/batches/xyz/cancel", 404, "batch_id"),
        Case("post", f"/v1/batches/{uuid.uuid4()}/cancel", 404, "batch_id"),
        Case("delete", f"/v1/batches/{uuid.uuid4()}", 405),
    ]  # fmt: skip
    others = [
        Case("get", "/v1/models?family=rnn", 400, "family"),
        Case("get", "/v1/models?limit=1000", 400, "limit"),
        Case("get", "/v1/models?cursor=zzz", 400, "cursor"),
        Case("get", "/v1/models?name=" + "n" * 201, 400, "name"),
        Case("get", "/v1/models", 401, None, auth=False),
        Case("get", "/v1/models/123", 404, "model_id"),
        Case("get", f"/v1/models/{uuid.uuid4()}", 404, "model_id"),
        Case("post", "/v1/models", 405, json={}),
        Case("delete", f"/v1/models/{model_id}", 405),
        Case("post", "/v1/datasets", 415, None, json={"file": "x"}),
        Case("post", "/v1/datasets", 422, "file", data={"name": "x"}, content_type="multipart/form-data"),
        Case("post", "/v1/datasets", 401, None, data={}, content_type="multipart/form-data", auth=False),
        Case("get", "/v1/datasets?limit=x", 400, "limit"),
        Case("get", "/v1/datasets?cursor=@@", 400, "cursor"),
        Case("get", "/v1/datasets/abc", 404, "dataset_id"),
        Case("get", f"/v1/datasets/{uuid.uuid4()}", 404, "dataset_id"),
        Case("delete", f"/v1/datasets/{uuid.uuid4()}", 405),
        Case("get", "/v1/objects/tenants/x/y.png", 403, None, auth=False, s3_status=404),
        Case("get", "/v1/objects/x/y.png?expires=-1&signature=abc", 403, None, auth=False, s3_status=404),
        Case("post", "/v1/objects/tenants/x/y.png", 405, auth=False),
        Case("post", "/v1/openapi.json", 405, auth=False),
        Case("post", "/healthz", 405, auth=False),
        Case("delete", "/readyz", 405, auth=False),
        Case("get", "/v1/nothing", 404, None),
        Case("get", "/nothing", 404, None, auth=False),
    ]  # fmt: skip
    return jobs + batches + others


def send(client: FlaskClient, case: Case, auth_headers: dict[str, str]) -> Any:
    headers = {**(auth_headers if case.auth else {}), **case.headers}
    kwargs: dict[str, Any] = {"headers": headers}
    if case.json is not None:
        kwargs["json"] = case.json
    if case.data is not None:
        kwargs["data"] = case.data
    if case.content_type is not None:
        kwargs["content_type"] = case.content_type
    return getattr(client, case.method)(case.path, **kwargs)


def check_all(client: FlaskClient, auth_headers: dict[str, str], model_id: uuid.UUID) -> list[str]:
    """Every case's problems (an empty list when the API answered each as expected)."""
    problems = []
    local = isinstance(client.application.extensions["genq"].store, LocalStore)
    for case in bad_requests(model_id):
        expected = case.status if local or case.s3_status is None else case.s3_status
        response = send(client, case, auth_headers)
        label = f"{case.method.upper()} {case.path[:80]} {str(case.json or case.data)[:80]}"
        body = response.get_json(silent=True)
        error = (body or {}).get("error") if isinstance(body, dict) else None
        if response.status_code != expected:
            problems.append(f"{label}: {response.status_code} (expected {expected}): {body}")
        elif not error or not {"code", "message", "details"} <= set(error):
            problems.append(f"{label}: not a JSON error: {response.data[:200]!r}")
        elif case.field is not None and (
            not error["details"]
            or error["details"][0].get("field") != case.field
            or case.field not in error["message"]
        ):
            problems.append(f"{label}: expected field {case.field}: {error}")
    return problems
