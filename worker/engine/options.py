"""Family options: the option schemas of shared/specs.py, as the engine's configs and its parser.

Each option is declared once, in shared/specs.py; a family's `Config` dataclass takes its option fields
from there (`option_fields`), with the family's own value for an option whose schema default is None
("the family's default"), and adds what the data and the family fix. Options reach the engine parsed:
the API validated them, and the runner hands over the parsed model. Only a direct caller (a benchmark, a
test) gives a plain dict, parsed here once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from shared.specs import IMAGE_SIZES, TrainOptions
from worker.engine.imageset import ImageSet
from worker.engine.runtime import ConfigError


def option_fields(schema: type[TrainOptions], **family_defaults: Any) -> type:
    """A dataclass with one field per option of `schema`, defaulting to the schema's default or, where
    given, the family's (for options whose schema default is None). A family's Config inherits it."""
    fields = [
        (name, info.annotation, dataclasses.field(default=family_defaults.get(name, info.default)))
        for name, info in schema.model_fields.items()
    ]
    return dataclasses.make_dataclass(f"{schema.__name__}Fields", fields)


def parse_options(
    schema: type[TrainOptions], family: str, options: TrainOptions | Mapping[str, Any]
) -> TrainOptions:
    """`options` as the family's parsed schema. A dict (None values mean "the family's default") is
    validated; errors raise ConfigError("options.<field>: ...")."""
    if isinstance(options, schema):
        return options
    if isinstance(options, TrainOptions):
        raise ConfigError(f"options: {type(options).__name__} given for a {family} model")
    for key in options:
        if key not in schema.model_fields:
            raise ConfigError(f"options.{key}: unknown option for {family}")
    try:
        return schema.model_validate({key: value for key, value in options.items() if value is not None})
    except ValidationError as error:
        first = error.errors()[0]
        raise ConfigError(f"options.{first['loc'][0]}: {first['msg']}") from None


def given(options: TrainOptions) -> dict[str, Any]:
    """The options that are set (not None): the rest take the Config's defaults."""
    return {name: value for name, value in options.model_dump().items() if value is not None}


def check_generative_data(data: ImageSet, family: str) -> None:
    if data.size not in IMAGE_SIZES or data.images.shape[-2] != data.size or data.channels not in (1, 3):
        raise ConfigError(f"data: {family} needs square 1- or 3-channel images of size {IMAGE_SIZES}")


def resolve_conditional(requested: bool | None, data: ImageSet) -> bool:
    """Conditional when asked, or by default when the data has labels of at least two classes."""
    labelled = data.labels is not None and data.num_classes >= 2
    if requested is None:
        return labelled
    if requested and not labelled:
        raise ConfigError("options.conditional: the data set has no labels (or a single class)")
    return requested
