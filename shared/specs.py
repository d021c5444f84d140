"""Job specs: the typed params of every job kind, validated by the API and re-read by the worker.

These pydantic models are the single source of truth for what a user may submit: the API validates
requests with them, `GET /v1/openapi.json` is generated from them, and the worker parses a job's stored
params with the same classes. No torch here: the API imports this module.
"""

from __future__ import annotations

import enum
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

MAX_GENERATE_COUNT = 100_000
MAX_BATCH_ITEMS = 10_000
BUILTIN_DATASETS = ("fashion-mnist", "digits")
IMAGE_SIZES = (28, 32, 64)

Seed = Annotated[int, Field(ge=0, lt=2**63)]
Label = Annotated[int, Field(ge=0, lt=1000)]


class JobKind(enum.StrEnum):
    train = "train"
    generate = "generate"
    edit = "edit"
    evaluate = "evaluate"


class Family(enum.StrEnum):
    cnn = "cnn"
    gan = "gan"
    vae = "vae"


class Spec(BaseModel):
    # Unknown fields are errors: a typo in an option must not silently train the wrong model.
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------------
# Training: common options, then each family's own. Each option is declared here only: the engine's
# family Configs take their option fields from these classes (worker/engine/options.py). None means
# "the family's default".


class TrainOptions(Spec):
    seed: Seed = 0
    epochs: int | None = Field(None, ge=1, le=1000, description="passes over the training split")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="optimiser steps; wins over epochs")
    batch_size: int | None = Field(None, ge=2, le=4096)
    lr: float | None = Field(None, gt=0, le=1.0)


class CnnOptions(TrainOptions):
    augment: bool = Field(True, description="random shifts and flips during training")
    width: int = Field(32, ge=8, le=512, description="channels of the first stage")
    label_smoothing: float = Field(0.1, ge=0, lt=1)


class GanOptions(TrainOptions):
    conditional: bool | None = Field(None, description="class-conditional; default: when the data has labels")
    latent_dim: int = Field(128, ge=2, le=1024)
    width: int = Field(64, ge=8, le=512)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    diff_augment: bool | None = Field(
        None,
        description="differentiable augmentation: true always, false never; default adaptive (it switches "
        "itself on as the discriminator starts to overfit, as on small data sets: StyleGAN2-ADA)",
    )
    lr_d: float | None = Field(None, gt=0, le=1.0)


class VaeOptions(TrainOptions):
    conditional: bool | None = Field(None, description="class-conditional; default: when the data has labels")
    latent_dim: int = Field(32, ge=2, le=1024)
    width: int = Field(32, ge=8, le=512)
    kl_warmup_steps: int = Field(2000, ge=0, le=10_000_000)
    likelihood: Literal["logistic", "bernoulli", "gaussian"] = "logistic"
    prior_components: int = Field(
        0, ge=0, le=100, description="Gaussian mixture fitted to training latents for sampling; 0: N(0, I)"
    )


FAMILY_OPTIONS: dict[Family, type[TrainOptions]] = {
    Family.cnn: CnnOptions,
    Family.gan: GanOptions,
    Family.vae: VaeOptions,
}


class TrainParams(Spec):
    family: Family
    dataset: str = Field(
        "fashion-mnist", description="'fashion-mnist', 'digits', or the id of an uploaded dataset"
    )
    image_size: Literal[28, 32, 64] | None = Field(None, description="default: the data set's own size")
    name: str | None = Field(None, max_length=200, description="model name in the registry")
    options: dict[str, Any] = Field(default_factory=dict, description="family options (see the schemas)")
    max_seconds: float | None = Field(None, gt=0, le=7 * 86400, description="training time budget")
    checkpoint_every_steps: int | None = Field(None, ge=1)
    checkpoint_every_seconds: float = Field(60.0, ge=1, le=86400)
    _options: TrainOptions = PrivateAttr()  # `options` parsed, by _check

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.dataset not in BUILTIN_DATASETS:
            try:
                uuid.UUID(self.dataset)
            except ValueError:
                raise ValueError(
                    f"dataset: must be one of {', '.join(BUILTIN_DATASETS)} or an uploaded dataset id"
                ) from None
        try:
            options = FAMILY_OPTIONS[self.family].model_validate(self.options)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"options.{field}: {first['msg']}") from None
        self.options = options.model_dump(exclude_unset=True)
        self._options = options
        return self

    def family_options(self) -> TrainOptions:
        """The family's options, parsed when these params were (not checked again)."""
        return self._options


# ---------------------------------------------------------------------------------------------------
# Sampling and editing


class GenerateParams(Spec):
    model_id: uuid.UUID
    count: int = Field(..., ge=1, le=MAX_GENERATE_COUNT)
    seed: Seed = Field(0, description="item i uses item_seed(seed, first_index + i) unless seeds are given")
    seeds: list[Seed] | None = Field(None, max_length=MAX_GENERATE_COUNT, description="per-item seeds")
    first_index: int = Field(0, ge=0, description="index of the first item (batches set it)")
    labels: list[Label] | Label | None = Field(None, description="one label for all, or one per item")
    truncation: float = Field(1.0, gt=0, le=1.0)
    temperature: float = Field(1.0, gt=0, le=2.0)
    output_size: Literal[28, 32, 64] | None = Field(None, description="resize outputs; default the model's")
    shard_size: int = Field(1000, ge=1, le=10_000, description="images per shard archive")

    @model_validator(mode="after")
    def _check(self) -> GenerateParams:
        if self.seeds is not None and len(self.seeds) != self.count:
            raise ValueError(f"seeds: {len(self.seeds)} given for count {self.count}")
        if isinstance(self.labels, list) and len(self.labels) != self.count:
            raise ValueError(f"labels: {len(self.labels)} given for count {self.count}")
        return self


EditOperation = Literal["reconstruct", "interpolate", "inpaint", "class_swap", "attribute", "invert"]


class ImageSource(Spec):
    """Source images for an edit: items of a data set by index (built-in or uploaded)."""

    dataset: str = "fashion-mnist"
    split: Literal["train", "test"] = "test"
    indices: list[Annotated[int, Field(ge=0)]] = Field(..., min_length=1, max_length=1000)


class MaskBox(Spec):
    """The missing region for inpainting, in model pixels: [top, bottom) x [left, right)."""

    top: int = Field(..., ge=0)
    left: int = Field(..., ge=0)
    bottom: int = Field(..., ge=1)
    right: int = Field(..., ge=1)

    @model_validator(mode="after")
    def _check(self) -> MaskBox:
        if self.bottom <= self.top or self.right <= self.left:
            raise ValueError("mask: bottom/right must be greater than top/left")
        return self


class EditParams(Spec):
    model_id: uuid.UUID
    operation: EditOperation
    source: ImageSource | None = Field(None, description="images to edit (all but seed interpolation)")
    seeds: list[Seed] | None = Field(None, min_length=2, max_length=2, description="interpolate two seeds")
    target_label: Label | None = Field(None, description="class_swap / attribute target class")
    mask: MaskBox | None = None
    steps: int = Field(8, ge=2, le=256, description="interpolation frames or optimisation steps scale")
    strength: float = Field(1.0, ge=-4.0, le=4.0)
    classifier_id: uuid.UUID | None = Field(None, description="CNN that scores class edits")
    seed: Seed = 0

    @model_validator(mode="after")
    def _check(self) -> EditParams:
        op = self.operation
        if op == "interpolate":
            if self.seeds is None and (self.source is None or len(self.source.indices) != 2):
                raise ValueError("interpolate: give seeds (two) or source with exactly two indices")
        elif self.source is None:
            raise ValueError(f"source: required for {op}")
        if op in ("class_swap", "attribute") and self.target_label is None:
            raise ValueError(f"target_label: required for {op}")
        if op == "inpaint" and self.mask is None:
            raise ValueError("mask: required for inpaint")
        return self


class EvaluateParams(Spec):
    model_id: uuid.UUID
    classifier_id: uuid.UUID | None = Field(None, description="feature CNN; default: newest CNN on the data")
    num_samples: int = Field(10_000, ge=100, le=100_000)
    seed: Seed = 0


PARAMS_BY_KIND: dict[JobKind, type[Spec]] = {
    JobKind.train: TrainParams,
    JobKind.generate: GenerateParams,
    JobKind.edit: EditParams,
    JobKind.evaluate: EvaluateParams,
}


WebhookEvent = Literal["started", "progress", "completed"]
WEBHOOK = "https URL that receives signed events (Standard Webhooks); checked when submitted"
WEBHOOK_EVENTS = "default: started, completed; progress is sent at most once a second"


def _check_webhook(spec: JobSubmission | BatchSubmission) -> None:
    if spec.webhook_events is not None and spec.webhook is None:
        raise ValueError("webhook_events: give webhook too")


class JobSubmission(Spec):
    kind: JobKind
    params: dict[str, Any]
    priority: int = Field(0, ge=0, le=9, description="higher runs first within a queue")
    webhook: str | None = Field(None, max_length=2048, description=WEBHOOK)
    webhook_events: list[WebhookEvent] | None = Field(
        None, min_length=1, max_length=3, description=WEBHOOK_EVENTS
    )

    @model_validator(mode="after")
    def _check(self) -> JobSubmission:
        _check_webhook(self)
        return self

    def parsed_params(self) -> Spec:
        return PARAMS_BY_KIND[self.kind].model_validate(self.params)


class BatchSubmission(Spec):
    """Either a list of job submissions, or one template with a list of seeds and/or labels."""

    items: list[JobSubmission] | None = Field(None, min_length=1, max_length=MAX_BATCH_ITEMS)
    template: JobSubmission | None = None
    seeds: list[Seed] | None = Field(None, min_length=1, max_length=MAX_BATCH_ITEMS)
    labels: list[Label] | None = Field(None, min_length=1, max_length=MAX_BATCH_ITEMS)
    priority: int = Field(0, ge=0, le=9)
    webhook: str | None = Field(None, max_length=2048, description=f"{WEBHOOK}; batch events, not per item")
    webhook_events: list[WebhookEvent] | None = Field(
        None, min_length=1, max_length=3, description=WEBHOOK_EVENTS
    )

    @model_validator(mode="after")
    def _check(self) -> BatchSubmission:
        _check_webhook(self)
        if (self.items is None) == (self.template is None):
            raise ValueError("give exactly one of items or template")
        if self.template is not None and self.seeds is None and self.labels is None:
            raise ValueError("template: give seeds and/or labels to expand it")
        if self.seeds is not None and self.labels is not None and len(self.seeds) != len(self.labels):
            raise ValueError("labels: must have as many entries as seeds")
        return self

    def item_count(self) -> int:
        if self.items is not None:
            return len(self.items)
        return len(self.seeds) if self.seeds is not None else len(self.labels or [])

    def template_values(self, i: int) -> dict[str, Any]:
        """What template item i sets in the template's params: its seed and/or its label."""
        values: dict[str, Any] = {}
        if self.seeds is not None:
            values["seed"] = self.seeds[i]
        if self.labels is not None:
            values["labels"] = self.labels[i]
        return values

    def template_item(self, i: int) -> JobSubmission:
        """Template item i: the template with its seed/label filled into params.seed/params.labels."""
        assert self.template is not None
        return self.template.model_copy(
            update={"params": {**self.template.params, **self.template_values(i)}}
        )

    def expand(self) -> list[JobSubmission]:
        """The batch's jobs in order."""
        if self.items is not None:
            return self.items
        return [self.template_item(i) for i in range(self.item_count())]
