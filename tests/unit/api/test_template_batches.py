"""A template batch is validated once and its items derived: the same jobs, and the same errors, as
validating every item."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import model_validator

from api import submission as submission_module
from api.errors import ApiError
from api.submission import _prepare_batch, _prepare_each
from api.validation import parse
from shared.specs import PARAMS_BY_KIND, BatchSubmission, GenerateParams, JobKind

MODEL = str(uuid.uuid4())


def _every_item(batch: BatchSubmission) -> Any:
    """What validating each expanded item gives (the way a batch of items is prepared)."""
    items = batch.expand()
    return _prepare_each(batch, items, ["template."] * len(items))


def _outcome(prepare: Any, body: dict[str, Any]) -> Any:
    batch = parse(BatchSubmission, body)
    try:
        prepared, refs = prepare(batch)
    except ApiError as error:
        return ("error", error.status, error.code, error.message, error.details)
    return ("ok", prepared, sorted({(prefix, kind) for prefix, kind, _ in refs}))


def _generate(**params: Any) -> dict[str, Any]:
    return {"kind": "generate", "params": {"model_id": MODEL, "count": 2, **params}}


CASES = [
    {"template": _generate(), "seeds": [5, 6, 7]},
    {"template": _generate(truncation=0.5, seed=9, labels=[1, 2]), "seeds": [1, 2], "labels": [3, 4]},
    {"template": _generate(labels=4), "labels": [0, 999, 3], "priority": 3},
    {"template": {**_generate(), "priority": 7}, "seeds": [2**63 - 1, 0]},
    {"template": _generate(seeds=[1, 2]), "seeds": [8]},
    {"template": {"kind": "evaluate", "params": {"model_id": MODEL, "num_samples": 100}}, "seeds": [1, 2]},
    {
        "template": {
            "kind": "edit",
            "params": {"model_id": MODEL, "operation": "interpolate", "seeds": [1, 2]},
        },
        "seeds": [3, 4],
    },
    # Errors: every item of a template fails alike, and the first item's error is the one given.
    {"template": _generate(model_id="nope"), "seeds": [1, 2]},
    {"template": _generate(count=0), "seeds": [1]},
    {"template": _generate(seeds=[1]), "seeds": [1, 2]},
    {"template": _generate(), "labels": [1, 2]},  # labels: an int per item, fine
    {"template": {"kind": "evaluate", "params": {"model_id": MODEL}}, "labels": [1]},  # labels: not a field
    {"template": {"kind": "train", "params": {"family": "gan"}}, "seeds": [1, 2]},  # seed: not a field
    {"template": {"kind": "train", "params": {"family": "gan", "options": {"width": 1}}}, "seeds": [1]},
    {"template": {**_generate(), "webhook": "https://example.com/hook"}, "seeds": [1]},
]


@pytest.mark.parametrize("body", CASES)
def test_a_template_batch_prepares_as_its_items_would_one_by_one(body: dict[str, Any]) -> None:
    assert _outcome(_prepare_batch, body) == _outcome(_every_item, body)


def test_items_take_their_own_seed_and_label_over_the_templates() -> None:
    body = {"template": _generate(seed=9, labels=1), "seeds": [1, 2, 3], "labels": [4, 5, 6], "priority": 2}
    prepared, refs = _prepare_batch(parse(BatchSubmission, body))
    assert [(job.params["seed"], job.params["labels"], job.priority) for job in prepared] == [
        (1, 4, 2),
        (2, 5, 2),
        (3, 6, 2),
    ]
    assert prepared[0].params is not prepared[1].params  # each job owns its params
    assert [(prefix, kind) for prefix, kind, _ in refs] == [("template.params", JobKind.generate)]


def test_a_spec_that_rewrites_an_items_values_has_every_item_validated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Rewriting(GenerateParams):
        @model_validator(mode="after")
        def _shift(self) -> Rewriting:
            self.seed += 1
            return self

    monkeypatch.setitem(PARAMS_BY_KIND, JobKind.generate, Rewriting)
    body = {"template": _generate(), "seeds": [1, 2, 3]}
    calls: list[int] = []
    prepare_each = submission_module._prepare_each

    def counting(batch: BatchSubmission, items: Any, prefixes: Any) -> Any:
        calls.append(len(items))
        return prepare_each(batch, items, prefixes)

    monkeypatch.setattr(submission_module, "_prepare_each", counting)
    prepared, _ = _prepare_batch(parse(BatchSubmission, body))
    assert [job.params["seed"] for job in prepared] == [2, 3, 4]
    assert calls == [1, 3]  # the first item, then (its seed having been rewritten) all of them
