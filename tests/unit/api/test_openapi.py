"""The OpenAPI document is valid and is the live routes': every one of them, with its methods, what it
reads and what it answers."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


def _spec(client: FlaskClient) -> dict:
    response = client.get("/v1/openapi.json")  # public: no key
    assert response.status_code == 200
    return response.json


def test_document_is_valid_openapi(client: FlaskClient) -> None:
    spec = _spec(client)
    validate(spec)
    schemas = spec["components"]["schemas"]
    assert {"JobSubmission", "BatchSubmission", "TrainParams", "GenerateParams", "EditParams"} <= set(schemas)
    assert schemas["GenerateParams"]["properties"]["count"]["maximum"] == 100_000  # from the spec itself
    post = spec["paths"]["/v1/jobs"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobSubmission"
    }
    assert {"202", "200", "400", "409", "415", "422", "401", "429"} <= set(post["responses"])


def test_every_route_is_documented_with_its_methods(app: Flask, client: FlaskClient) -> None:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/v1/") or rule.rule in ("/healthz", "/readyz", "/metrics"):
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
            routes |= {(path, method.lower()) for method in rule.methods & METHODS}
    documented = {(path, method) for path, ops in _spec(client)["paths"].items() for method in ops}
    assert {"/healthz", "/readyz", "/metrics", "/v1/usage"} <= {path for path, _ in routes}
    assert routes == documented


def test_operations_say_what_they_read_and_answer(client: FlaskClient) -> None:
    paths = _spec(client)["paths"]
    for path, ops in paths.items():
        for method, op in ops.items():
            public = op.get("security") == []
            assert ("429" in op["responses"]) is not public, (method, path)  # every key is rate limited
            for status, answer in op["responses"].items():
                if status >= "400" and (path, status) != ("/readyz", "503"):  # not ready: its checks
                    assert answer["content"] == ERROR, (method, path, status)
    assert {(p, m) for p, ops in paths.items() for m, op in ops.items() if op.get("security") == []} == {
        ("/v1/openapi.json", "get"), ("/v1/objects/{key}", "get"), ("/healthz", "get"), ("/readyz", "get"),
    }  # fmt: skip

    def names(path: str, method: str, where: str) -> set[str]:
        return {p["name"] for p in paths[path][method]["parameters"] if p["in"] == where}

    assert names("/v1/jobs", "post", "header") == {"Idempotency-Key"}
    assert names("/v1/batches", "post", "header") == {"Idempotency-Key"}
    assert names("/v1/jobs", "get", "query") == {"status", "kind", "batch", "limit", "cursor"}
    assert names("/v1/webhooks/deliveries", "get", "query") == {"status", "job", "batch", "limit", "cursor"}
    assert names("/v1/objects/{key}", "get", "query") == {"expires", "signature", "filename"}
    for read in ("/v1/jobs/{job_id}", "/v1/batches/{batch_id}"):
        assert names(read, "get", "query") == {"wait"}
        assert names(read, "get", "header") == {"If-None-Match"}
        assert "content" not in paths[read]["get"]["responses"]["304"]
        assert names(read, "get", "path") == {read.split("{")[1].rstrip("}")}
    limit = next(p for p in paths["/v1/jobs"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"] | {"title": None} == {
        "type": "integer", "minimum": 1, "maximum": 500, "default": 50, "title": None,
    }  # fmt: skip

    upload = paths["/v1/datasets"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"201", "413", "415", "422"} <= set(upload["responses"])
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert "application/octet-stream" in paths["/v1/objects/{key}"]["get"]["responses"]["200"]["content"]
    assert "503" in paths["/readyz"]["get"]["responses"]
    assert paths["/v1/usage"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UsageView"
    }
    assert "202" in paths["/v1/webhooks/deliveries/{delivery_id}/resend"]["post"]["responses"]
