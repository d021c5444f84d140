"""The OpenAPI 3.1 document, generated: a route table below plus the JSON schemas of the same pydantic
specs that validate requests (shared/specs.py) and of the response shapes (api/schemas.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import schemas as s
from api.errors import HTTP_CODES
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from shared.models import JobStatus
from shared.specs import FAMILY_OPTIONS, PARAMS_BY_KIND, BatchSubmission, Family, JobKind, JobSubmission

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "query" | "header"
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI form: /v1/jobs/{job_id}
    summary: str
    response: type[BaseModel] | dict[str, Any]  # a response model, or raw OpenAPI content
    status: int = 200
    body: type[BaseModel] | None = None
    multipart: bool = False
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    auth: bool = True
    extra_statuses: tuple[int, ...] = ()  # other success codes with the same body


def _csv(values: list[str]) -> dict[str, Any]:
    return {"type": "string", "description": f"comma-separated: {', '.join(values)}"}


PAGING = (
    Param(
        "limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}
    ),
    Param("cursor", "query", {"type": "string"}, "next_cursor of the previous page"),
)
IDEMPOTENCY = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "maxLength": 200},
    "repeat a request safely: same key and body",
)
SIGNED = (
    Param("expires", "query", {"type": "integer"}, "unix time the URL expires"),
    Param("signature", "query", {"type": "string"}),
    Param("filename", "query", {"type": "string"}, "download name"),
)
LONG_POLL = (
    Param("wait", "query", {"type": "integer", "minimum": 0, "maximum": 60, "default": 0},
          "answer at the next change, or after this many seconds"),
    Param("If-None-Match", "header", {"type": "string"},
          "the ETag of the copy you hold: 304 while it is current; with wait, waits while it is current"),
)  # fmt: skip
BAD = (400, 401, 404, 415, 422)
FILE = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
DOCUMENT = {"application/json": {"schema": {"type": "object"}}}

READ = (401, 404)
LIST = (400, 401)
ROUTES: tuple[Operation, ...] = (
    Operation("post", "/v1/jobs", "Submit a job", s.JobView, 202, JobSubmission,
              params=(IDEMPOTENCY,), errors=(*BAD, 409), extra_statuses=(200,)),
    Operation("get", "/v1/jobs", "List jobs, newest first", s.JobList, params=(
        Param("status", "query", _csv([x.value for x in JobStatus])),
        Param("kind", "query", _csv([x.value for x in JobKind])),
        Param("batch", "query", {"type": "string", "format": "uuid"}),
        *PAGING), errors=LIST),
    Operation("get", "/v1/jobs/{job_id}", "Read a job: status, progress, artifacts", s.JobView,
              params=LONG_POLL, errors=(400, *READ), extra_statuses=(304,)),
    Operation("post", "/v1/jobs/{job_id}/cancel", "Cancel a job (idempotent)", s.JobView, errors=READ),
    Operation("post", "/v1/batches", "Submit up to 10,000 jobs", s.BatchCreated, 202, BatchSubmission,
              params=(IDEMPOTENCY,), errors=(*BAD, 409), extra_statuses=(200,)),
    Operation("get", "/v1/batches/{batch_id}", "Read a batch: jobs per status", s.BatchView,
              params=LONG_POLL, errors=(400, *READ), extra_statuses=(304,)),
    Operation("post", "/v1/batches/{batch_id}/cancel", "Cancel a batch", s.BatchView, errors=READ),
    Operation("get", "/v1/models", "List trained models, newest first", s.ModelList, params=(
        Param("family", "query", _csv([x.value for x in Family])),
        Param("name", "query", {"type": "string"}),
        *PAGING), errors=LIST),
    Operation("get", "/v1/models/{model_id}", "Read a model", s.ModelView, errors=READ),
    Operation("post", "/v1/datasets", "Upload a data set", s.DatasetView, 201, s.DatasetUpload,
              multipart=True, errors=(401, 413, 415, 422)),
    Operation("get", "/v1/datasets", "List data sets", s.DatasetList, params=PAGING, errors=LIST),
    Operation("get", "/v1/datasets/{dataset_id}", "Read a data set", s.DatasetView, errors=READ),
    Operation("get", "/v1/objects/{key}", "Download through a signed URL (local storage)", FILE,
              params=SIGNED, errors=(403, 404), auth=False),
    Operation("get", "/healthz", "Liveness", s.Health, auth=False),
    Operation("get", "/readyz", "Readiness: database, broker, storage", s.Readiness, auth=False,
              extra_statuses=(503,)),
    Operation("get", "/v1/openapi.json", "This document", DOCUMENT, auth=False),
    Operation("get", "/v1/webhooks/deliveries", "Webhook deliveries and their attempts, newest first",
              s.WebhookDeliveryList, params=(
        Param("status", "query", _csv(["pending", "succeeded", "failed"])),
        Param("job", "query", {"type": "string", "format": "uuid"}),
        Param("batch", "query", {"type": "string", "format": "uuid"}),
        *PAGING), errors=LIST),
    Operation("post", "/v1/webhooks/deliveries/{delivery_id}/resend", "Send a delivery again (same id)",
              s.WebhookDeliveryView, 202, errors=READ),
    Operation("get", "/v1/usage", "Your queued and running jobs, worker time today, and your limits",
              s.UsageView, errors=(401,)),
    Operation("get", "/metrics", "Prometheus metrics: send the operator token (GENQ_METRICS_TOKEN)",
              {"text/plain": {"schema": {"type": "string"}}}, errors=(401, 403, 404)),
)  # fmt: skip

RESPONSES = [s.ErrorResponse, *{op.response for op in ROUTES if not isinstance(op.response, dict)}]
REQUESTS = [*PARAMS_BY_KIND.values(), *FAMILY_OPTIONS.values(), *{op.body for op in ROUTES if op.body}]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _components() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in [*RESPONSES, *REQUESTS]], ref_template=REF)
    schemas = defs["$defs"]
    # params and options are validated per kind / family: say which schemas they follow.
    params = schemas["JobSubmission"]["properties"]["params"]
    params["oneOf"] = [_ref(m) for m in PARAMS_BY_KIND.values()]
    params["description"] = "by kind: " + ", ".join(
        f"{k.value}: {m.__name__}" for k, m in PARAMS_BY_KIND.items()
    )
    options = schemas["TrainParams"]["properties"]["options"]
    options["oneOf"] = [_ref(m) for m in FAMILY_OPTIONS.values()]
    return schemas


def _operation(op: Operation) -> dict[str, Any]:
    path_params = [part[1:-1] for part in op.path.split("/") if part.startswith("{")]
    params = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"} if n == "key" else
         {"type": "string", "format": "uuid"}} for n in path_params
    ] + [{"name": p.name, "in": p.where, "required": False, "schema": p.schema, "description": p.description}
         for p in op.params]  # fmt: skip
    if isinstance(op.response, dict):
        content = op.response
    else:
        content = {"application/json": {"schema": _ref(op.response)}}
    responses: dict[str, Any] = {str(op.status): {"description": op.summary, "content": content}}
    for status in op.extra_statuses:
        if status == 304:  # no body: the client's copy (its If-None-Match) is current
            responses["304"] = {"description": "not modified"}
            continue
        meaning = {200: "idempotent replay: the existing resource", 503: "not ready"}.get(status, "")
        responses[str(status)] = {"description": meaning, "content": content}
    error = {"application/json": {"schema": _ref(s.ErrorResponse)}}
    # Every authenticated request counts against its key's rate limit; submits also against quotas.
    for status in sorted({*op.errors, 405, 500, *((429,) if op.auth else ())}):
        responses[str(status)] = {"description": HTTP_CODES.get(status, "internal_error"), "content": error}
    operation: dict[str, Any] = {
        "summary": op.summary,
        "operationId": op.method + re.sub(r"[^a-z0-9]+", "_", op.path.lower()).rstrip("_"),
        "parameters": params,
        "responses": responses,
    }
    if op.body is not None:
        media = "multipart/form-data" if op.multipart else "application/json"
        operation["requestBody"] = {"required": True, "content": {media: {"schema": _ref(op.body)}}}
    if not op.auth:
        operation["security"] = []
    return operation


@cache
def build_spec() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in ROUTES:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "genq",
            "version": "1.0.0",
            "description": "Train and sample CNN, GAN and VAE image models as queued jobs.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": _components(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a genq API key"}
            },
        },
    }
