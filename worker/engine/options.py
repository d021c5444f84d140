"""Family options: a user's option dict checked against the family's schema in shared/specs.py.

The schemas are the ones the API validates with, so an option means the same on both sides; here they are
checked again because the engine is also called directly, and its errors must name the field too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from worker.engine.imageset import ImageSet
from worker.engine.runtime import ConfigError

SIZES = (28, 32, 64)


def validated_options(schema: type[BaseModel], family: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options given (None values dropped: they mean "the family's default"), validated.
    Raises ConfigError("options.<field>: ...")."""
    for key in options:
        if key not in schema.model_fields:
            raise ConfigError(f"options.{key}: unknown option for {family}")
    given = {key: value for key, value in options.items() if value is not None}
    try:
        return schema.model_validate(given).model_dump(exclude_unset=True)
    except ValidationError as error:
        first = error.errors()[0]
        raise ConfigError(f"options.{first['loc'][0]}: {first['msg']}") from None


def check_generative_data(data: ImageSet, family: str) -> None:
    if data.size not in SIZES or data.images.shape[-2] != data.size or data.channels not in (1, 3):
        raise ConfigError(f"data: {family} needs square 1- or 3-channel images of size {SIZES}")


def resolve_conditional(requested: bool | None, data: ImageSet) -> bool:
    """Conditional when asked, or by default when the data has labels of at least two classes."""
    labelled = data.labels is not None and data.num_classes >= 2
    if requested is None:
        return labelled
    if requested and not labelled:
        raise ConfigError("options.conditional: the data set has no labels (or a single class)")
    return requested
