"""The OpenAPI 3.1 document, derived from the routes by spectree: each view declares its query and header
models, its body spec (shared/specs.py) and its response models (api/schemas.py) with `operation`, and the
document is what those declarations say, path by path.

The plugin below reads requests genq's way: query parameters and headers with the declared models (a 400
naming the parameter, as ever), bodies with the strict JSON reader (api/validation.json_body) and left to
the route to validate, since it names fields per kind (`params.options.epochs`, `items.1.params.count`).
Responses are checked against their models where `app.config["GENQ_CHECK_RESPONSES"]` is set (tests).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

from flask import current_app, request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from spectree import Response, SecurityScheme, SpecTree
from spectree.models import SecuritySchemeData, Server
from spectree.plugins.base import Context
from spectree.plugins.flask_plugin import FlaskPlugin

from api import schemas as s
from api.errors import HTTP_CODES
from api.validation import json_body, parameters
from shared.specs import FAMILY_OPTIONS, PARAMS_BY_KIND

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=BaseModel)
REF = "#/components/schemas/{model}"
FILE = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
DOCUMENT = {"application/json": {"schema": {"type": "object"}}}
TEXT = {"text/plain": {"schema": {"type": "string"}}}


class GenqPlugin(FlaskPlugin):
    def request_validation(self, request, query, json, form, headers, cookies) -> None:  # type: ignore[no-untyped-def]
        body = json_body() if json is not None else None  # 415/400 first, as before the library
        request.context = Context(
            parameters(query, request.args.to_dict(), "invalid_parameter") if query else None,
            body,
            None,  # multipart uploads are read by their route (415, 413, file and name checks)
            parameters(headers, _first_values(request.headers), "invalid_header") if headers else None,
            None,
        )

    def validate_response(self, resp, resp_model, skip_validation, force_resp_serialize):  # type: ignore[no-untyped-def]
        response = current_app.make_response(resp)
        model = resp_model.find_model(response.status_code) if resp_model else None
        if model is not None and current_app.config.get("GENQ_CHECK_RESPONSES"):
            try:
                model.model_validate_json(response.get_data())
            except ValidationError as exc:  # a 500, never mistaken for the client's 422
                raise AssertionError(f"{request.endpoint} disagrees with {model.__name__}: {exc}") from None
        return response, None

    def find_routes(self):  # type: ignore[no-untyped-def]
        return self.get_current_app().url_map.iter_rules()  # the document's own route too

    def get_func_operation_id(self, func: Callable[..., Any], path: str, method: str) -> str:
        return method.lower() + re.sub(r"[^a-z0-9]+", "_", path.lower()).rstrip("_")


def _first_values(headers: Any) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in headers.items():
        values.setdefault(name, value)
    return values


docs = SpecTree(
    backend=GenqPlugin,
    mode="strict",  # the JSON API only: the dashboard's pages are not in it
    annotations=False,
    title="genq",
    version="1.0.0",
    description="Train and sample CNN, GAN and VAE image models as queued jobs.",
    servers=[Server(url="/")],
    security_schemes=[
        SecurityScheme(
            name="bearer",
            data=SecuritySchemeData(type="http", scheme="bearer", description="a genq API key"),
        )
    ],
    security={"bearer": []},
    naming_strategy=lambda model: model.__name__,
    nested_naming_strategy=lambda _parent, child: child,
    validation_error_model=s.ErrorResponse,
)


def operation(
    ok: dict[int, Any],
    errors: tuple[int, ...] = (),
    *,
    query: type[BaseModel] | None = None,
    headers: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    form: type[BaseModel] | None = None,
    public: bool = False,
    content: dict[str, Any] | None = None,
) -> Callable[[F], F]:
    """Declare a route: its success answers (status: model, (model, description) or None for no body),
    its error statuses (all `ErrorResponse`), what it reads, and whether it needs an API key. Every
    authenticated request counts against its key's rate limit (429); `content` is a non-JSON 200."""
    codes: dict[str, Any] = {f"HTTP_{status}": model for status, model in ok.items()}
    for status in sorted({*errors, 405, 500, *(() if public else (429,))}):
        codes[f"HTTP_{status}"] = (s.ErrorResponse, HTTP_CODES.get(status, "internal_error"))
    validate = docs.validate(
        query=query,
        headers=headers,
        json=body,
        form=form,
        resp=Response(**codes),
        security=[] if public else None,
        # The library documents its validation status on every operation; ours are already listed.
        validation_error_status=400 if 400 in errors else 500,
    )

    def decorate(view: F) -> F:
        validated = validate(view)
        validated.genq_content = content  # type: ignore[attr-defined]
        return validated  # type: ignore[no-any-return]

    return decorate


def query_of(model: type[M]) -> M:
    """The request's query parameters, read with the route's declared model."""
    value = request.context.query  # type: ignore[attr-defined]
    assert isinstance(value, model)
    return value


def headers_of(model: type[M]) -> M:
    value = request.context.headers  # type: ignore[attr-defined]
    assert isinstance(value, model)
    return value


def body() -> dict[str, Any]:
    """The request's JSON object (strictly read); the route validates it with its spec."""
    value = request.context.json  # type: ignore[attr-defined]
    assert isinstance(value, dict)
    return value


def _per_kind(schemas: dict[str, Any]) -> None:
    """params and options are validated per kind / family: say which schemas they follow."""
    models = [*PARAMS_BY_KIND.values(), *FAMILY_OPTIONS.values()]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas.update(defs["$defs"])
    params = schemas["JobSubmission"]["properties"]["params"]
    params["oneOf"] = [{"$ref": REF.format(model=m.__name__)} for m in PARAMS_BY_KIND.values()]
    params["description"] = "by kind: " + ", ".join(
        f"{k.value}: {m.__name__}" for k, m in PARAMS_BY_KIND.items()
    )
    options = schemas["TrainParams"]["properties"]["options"]
    options["oneOf"] = [{"$ref": REF.format(model=m.__name__)} for m in FAMILY_OPTIONS.values()]


@cache
def build_spec() -> dict[str, Any]:
    """The document of the app's routes, built on the first request for it (every app made by
    api.app.create_app has the same routes)."""
    spec = copy.deepcopy(docs.spec)
    spec.pop("tags", None)
    app = current_app
    for rule in app.url_map.iter_rules():
        content = getattr(app.view_functions[rule.endpoint], "genq_content", None)
        if content is not None:
            path = docs.backend.parse_path(rule, None)[0]
            spec["paths"][path]["get"]["responses"]["200"]["content"] = content
    _per_kind(spec["components"]["schemas"])
    return spec
