"""The user-facing option schemas (shared/specs.py) and the engine's family configs agree."""

from __future__ import annotations

import dataclasses

import pytest

from shared.specs import FAMILY_OPTIONS, Family
from worker.engine import api


@pytest.mark.parametrize("family", list(Family))
def test_every_option_is_a_config_field_with_the_same_default(family: Family) -> None:
    config_defaults = {f.name: f.default for f in dataclasses.fields(api.family_module(family).Config)}
    for name, info in FAMILY_OPTIONS[family].model_fields.items():
        assert name in config_defaults, f"{family}: option {name} is not a Config field"
        if info.default is not None:  # None means "the family's default"
            assert info.default == config_defaults[name], f"{family}.{name}: defaults differ"
