"""The model families the engine serves, registered by name: the one table the front door dispatches on.

A family is a module with `Config.from_options(options, data)`, `train(config, data, ctx, holdout)` and
`load(state, device)`; a generative one also samples and edits. A new family is a module and a line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from worker.engine import cnn, gan, gan_edits, vae, vae_edits
from worker.engine.contract import EditOutput
from worker.engine.runtime import ConfigError


@dataclass(frozen=True)
class ModelFamily:
    name: str
    module: ModuleType  # Config, train, load
    sample: Callable[..., torch.Tensor] | None = None  # (model, seeds, labels, *, truncation, temperature)
    edit: Callable[..., EditOutput] | None = None  # (model, request, classify, ctx)


FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> None:
    FAMILIES[family.name] = family


register(ModelFamily("cnn", cnn))
register(ModelFamily("gan", gan, gan.sample, gan_edits.edit))
register(ModelFamily("vae", vae, vae.sample, vae_edits.edit))


def model_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ConfigError(f"family: unknown model family {name!r} (one of {', '.join(FAMILIES)})")
    return FAMILIES[name]
