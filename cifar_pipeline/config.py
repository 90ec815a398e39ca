"""The one configuration model shared by the CLI, the flow parameters (the UI form) and the report.

Every field except `preset` may be left empty (None): it then takes the preset's value, and the
preset takes the value from `[defaults]` in presets.toml. `resolved()` fills the gaps, so a form
that submits only `{"preset": "cpu"}` and one that spells out every field validate the same way.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from .errors import ConfigError

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"

PresetName = Literal["seed", "smoke", "cpu", "fast"]
ModelName = Literal["seed_net", "airnet"]

SOURCE_ENV = "CIFAR_PIPELINE_SOURCE"
MD5_ENV = "CIFAR_PIPELINE_MD5"


def _load_presets() -> dict[str, dict[str, Any]]:
    text = resources.files(__package__).joinpath("presets.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


_PRESET_FILE = _load_presets()
DEFAULTS: dict[str, Any] = _PRESET_FILE["defaults"]
PRESETS: dict[str, dict[str, Any]] = {k: v for k, v in _PRESET_FILE.items() if k != "defaults"}


_Width = Annotated[int, Field(ge=4, le=512)]
_Epochs = Annotated[float, Field(gt=0, le=1000)]
_Accuracy = Annotated[float, Field(gt=0, le=100)]
RecipeValue = Union[bool, int, float, str]  # noqa: UP007
# Fields that change a step's speed or its noise but not what a run computes, or that a budget plan
# chooses itself: a frontier point's figure stands for any seed and for these layouts and precisions,
# which train the same arithmetic to within seed noise (benchmarks/RESULTS.md).
NOT_RECIPE = frozenset({"epochs", "width", "seed", "channels_last", "precision", "compile"})


def _field(group: str, description: str) -> Any:
    return Field(default=None, description=description, json_schema_extra={"group": group})


def Opt(tp: Any, **constraints: Any) -> Any:  # noqa: N802 - reads as a type in the annotations below
    """`tp` (with its allowed range), or None: take the preset's value.

    None stays out of the JSON schema, so the UI form shows a plain number input or a dropdown
    instead of a type toggle ("int | None"); an empty form field still means "the preset's value".
    """
    inner = Annotated[tp, Field(**constraints)] if constraints else tp
    return Union[inner, SkipJsonSchema[None]]  # noqa: UP007 - a runtime-built union


def _schema_without_null_defaults(schema: dict[str, Any]) -> None:
    # `"default": null` would put a null into each form field, which the form then flags as invalid.
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class PipelineConfig(BaseModel):
    """Everything that decides what a run does. Empty fields take the preset's value."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Pipeline configuration",
                              json_schema_extra=_schema_without_null_defaults)

    # The order is the UI form's order: what people change most first, then data, training,
    # evaluation, and where/how it runs. Groups decide which cache keys a field enters.
    preset: PresetName = Field(
        default="seed",
        description="Named recipe the other fields start from: seed (the blog recipe), smoke "
        "(one quick epoch on a subset), cpu (best accuracy in ~15 min on 2 cores), fast (GPU).",
        json_schema_extra={"group": "run"},
    )
    epochs: Opt(float, gt=0, le=1000) = _field(
        "train", "Training epochs; a fraction trains part of the last epoch. Empty: the preset's."
    )
    seed: Opt(int, ge=0, le=2**31 - 1) = _field("train", "Seed for weight init, data order and augmentation.")
    lr: Opt(float, gt=0, le=100) = _field("train", "Peak learning rate of the SGD weights (mean-reduced loss).")
    batch_size: Opt(int, ge=1, le=8192) = _field("train", "Training batch size.")
    # --- data
    source: Opt(list[str]) = _field(
        "data",
        "Where to get cifar-10-python.tar.gz: URLs (http, https, file://) or local paths, tried in "
        f"order. Empty: ${SOURCE_ENV} if set, else the official URL.",
    )
    md5: Opt(str, pattern=r"^[0-9a-f]{32}$") = _field(
        "data", f"Expected md5 of the archive. Empty: ${MD5_ENV} if set, else the official digest."
    )
    extra_data: Opt(list[str]) = _field(
        "data",
        "Folders of extra labelled training images, laid out CLASS_NAME/.../image.png with the ten "
        "CIFAR-10 class names; added to the training split only.",
    )
    bad_images: Opt(Literal["fail", "skip"]) = _field(
        "data", "An unreadable extra image: fail (stop, naming every bad file) or skip (listed in the report)."
    )
    max_image_pixels: Opt(int, ge=1, le=1_000_000_000) = _field(
        "data", "Largest extra image accepted, in pixels (width x height); a larger one is a bad image "
        "(decompression bombs)."
    )
    train_subset: Opt(int, ge=0, le=50000) = _field("train", "Train on the first N training images (0 = all 50000).")
    validation_images: Opt(int, ge=0, le=49000) = _field(
        "train", "Hold out N training images (fixed by the seed) as a validation split; 0 = none."
    )
    test_subset: Opt(int, ge=0, le=10000) = _field("eval", "Evaluate on the first N test images (0 = all 10000).")
    # --- model
    model: Opt(ModelName) = _field("train", "Network: seed_net (the blog's Net) or airnet (airbench-style).")
    width: Opt(int, ge=4, le=512) = _field("train", "airnet base width (64 = airbench94); seed_net ignores it.")
    # --- optimisation
    # --- the time budget: how the run is planned, never what a planned run computes (outside every key)
    time_budget_min: Opt(float, ge=0, le=10080) = _field(
        "budget", "Training time budget in minutes: a measured warm-up decides the epochs (and, with "
        "budget_widths, the width) so that training ends within it (0 = none: train the configured epochs)."
    )
    budget_widths: Opt(list[Annotated[int, Field(ge=4, le=512)]]) = _field(
        "budget", "With a time budget: airnet widths to choose from (empty: the width as set). With "
        "budget_frontier, the one predicted most accurate for the time trains; without, the widest that keeps "
        "at least half the configured epochs."
    )
    max_epochs: Opt(float, ge=0, le=1000) = _field(
        "budget", "With a time budget: the most epochs a plan may grow to when the budget allows more than "
        "the configured epochs (0 = the configured epochs: the budget only shrinks a run)."
    )
    budget_frontier: Opt(list[Union[tuple[_Width, _Epochs, _Accuracy],  # noqa: UP007
                                    tuple[_Width, _Epochs, _Accuracy, dict[str, RecipeValue]]]]) = _field(
        "budget", "Measured test accuracy in percent of this recipe per width and epochs, as WIDTHxEPOCHS=ACCURACY "
        "(e.g. 64x16=91.52), or of the recipe with some fields changed, as WIDTHxEPOCHS[FIELD=VALUE;...]=ACCURACY "
        "(e.g. 64x27[cutout=8]=92.04); the plan picks the width, epochs and recipe these predict most accurate "
        "for the budget."
    )
    optimizer: Opt(Literal["sgd", "muon"]) = _field(
        "train", "sgd: SGD for every weight; muon: Muon for conv filters, SGD for biases and the head."
    )
    momentum: Opt(float, ge=0, lt=1) = _field("train", "SGD momentum (0 = plain SGD).")
    nesterov: Opt(bool) = _field("train", "Nesterov momentum (needs momentum > 0).")
    weight_decay: Opt(float, ge=0, le=1) = _field("train", "L2 weight decay as in torch.optim.SGD.")
    bias_lr_scale: Opt(float, gt=0, le=1000) = _field(
        "train", "BatchNorm biases get lr x this and weight decay / this."
    )
    muon_lr: Opt(float, gt=0, le=10) = _field("train", "Muon: peak step size of the normalised conv filters.")
    muon_momentum: Opt(float, ge=0, lt=1) = _field("train", "Muon: Nesterov momentum of the conv filters.")
    label_smoothing: Opt(float, ge=0, lt=1) = _field("train", "Cross-entropy label smoothing.")
    schedule: Opt(Literal["constant", "triangle"]) = _field(
        "train", "Learning-rate schedule: constant, or linear up then down (triangle)."
    )
    lr_start: Opt(float, ge=0, le=1) = _field("train", "Triangle: lr at step 0, as a fraction of lr.")
    lr_peak_at: Opt(float, ge=0, lt=1) = _field(
        "train", "Triangle: where the peak lies, as a fraction of training (0: decay from the start)."
    )
    lr_end: Opt(float, ge=0, le=1) = _field("train", "Triangle: lr at the last step, as a fraction of lr.")
    ema: Opt(bool) = _field("train", "Lookahead weight averaging (airbench).")
    ema_start_epoch: Opt(int, ge=0, le=1000) = _field(
        "train", "Lookahead: the epoch it starts in (airbench94: 0, from the first step)."
    )
    whiten_bias_epochs: Opt(int, ge=0, le=1000) = _field(
        "train", "airnet: epochs during which the whitening layer's bias trains."
    )
    # --- data path and augmentation
    normalize: Opt(Literal["unit", "standardize"]) = _field(
        "train", "unit: pixels scaled to [0, 1] (the blog); standardize: per-channel mean/std."
    )
    flip: Opt(Literal["none", "random", "alternate"]) = _field(
        "train", "Horizontal flips: none, random per image, or alternate (each image flips every other epoch)."
    )
    translate: Opt(int, ge=0, le=8) = _field("train", "Random translation in pixels (reflect padding).")
    cutout: Opt(int, ge=0, le=32) = _field("train", "Cutout square size in pixels (0 = off).")
    brightness: Opt(float, ge=0, le=1) = _field(
        "train", "Colour jitter: each image's brightness shifts by up to this (pixels in [0, 1]); 0 = off."
    )
    contrast: Opt(float, ge=0, lt=1) = _field(
        "train", "Colour jitter: each image's contrast scales by a factor in [1 - this, 1 + this]; 0 = off."
    )
    # --- speed; these change speed, not the method
    channels_last: Opt(bool) = _field("train", "Use channels-last memory layout.")
    precision: Opt(Literal["fp32", "bf16", "fp16"]) = _field(
        "train", "Autocast precision for training and evaluation: bf16 (CUDA or CPU), fp16 (CUDA only)."
    )
    compile: Opt(bool) = _field("train", "torch.compile the model (CUDA only; the CPU gains nothing).")
    # --- evaluation
    tta: Opt(int, ge=0, le=2) = _field(
        "eval", "Test-time augmentation: 0 none, 1 flip, 2 flip + 1-pixel translations."
    )
    eval_batch_size: Opt(int, ge=1, le=65536) = _field("eval", "Batch size for evaluation.")
    # --- where and how it runs; never changes a result
    promote_margin: Opt(float, ge=0, le=1) = _field(
        "run", "A run replaces the champion only if its accuracy beats it by more than this (0-1)."
    )
    regression_alert_points: Opt(float, ge=0, le=100) = _field(
        "run", "A run whose accuracy is more than this many percentage points below the champion's (same test "
        "set) emits a regression event, which the alerts report."
    )
    output_dir: Opt(str, min_length=1) = _field("run", "Folder for the data cache and the run folders.")
    device: Opt(Literal["auto", "cpu", "cuda"]) = _field("run", "auto picks CUDA when present, else the CPU.")
    download_retries: Opt(int, ge=0, le=20) = _field("run", "Retries of a failed download.")
    retry_delay_s: Opt(float, ge=0, le=3600) = _field("run", "First retry delay in seconds; doubles each retry.")
    download_timeout_s: Opt(float, gt=0, le=3600) = _field(
        "run", "Seconds a download may stall (no bytes arriving) before it counts as failed."
    )

    @field_validator("source", mode="before")
    @classmethod
    def _split_sources(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if isinstance(value, list):
            value = [v for v in value if isinstance(v, str) and v.strip()] or None
        return value

    @field_validator("extra_data", mode="before")
    @classmethod
    def _split_folders(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("budget_widths", mode="before")
    @classmethod
    def _split_widths(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [int(part) for part in value.replace(",", " ").split()]
        return value

    @field_validator("budget_frontier", mode="before")
    @classmethod
    def _parse_frontier(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in re.split(r"[\s,]+(?![^\[]*\])", value) if part]  # not within [...]
        if isinstance(value, list):
            value = [_frontier_point(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("budget_frontier", mode="after")
    @classmethod
    def _check_frontier_recipes(cls, value: Any) -> Any:
        return None if value is None else [_recipe_point(point) for point in value]

    @field_validator("md5", mode="before")
    @classmethod
    def _lower_md5(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_combinations(self) -> PipelineConfig:
        if self.nesterov and self.momentum is not None and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0 (set --momentum or --no-nesterov)")
        if self.train_subset and self.batch_size and self.batch_size > self.train_subset:
            raise ValueError(
                f"batch_size {self.batch_size} is larger than train_subset {self.train_subset}"
            )
        if self.validation_images and self.validation_images >= (self.train_subset or 50000):
            raise ValueError(f"validation_images {self.validation_images} leaves no training images "
                             f"(train_subset {self.train_subset or 50000})")
        return self

    # ------------------------------------------------------------------ resolution
    def resolved(self, environ: Mapping[str, str] | None = None) -> PipelineConfig:
        """Fill empty fields: explicit value > environment (source, md5) > preset > defaults."""
        environ = os.environ if environ is None else environ
        explicit = self.model_dump(exclude_none=True)
        from_env: dict[str, Any] = {}
        if "source" not in explicit and environ.get(SOURCE_ENV):
            from_env["source"] = environ[SOURCE_ENV]
            if environ.get(MD5_ENV):
                from_env["md5"] = environ[MD5_ENV]
        preset = {k: v for k, v in PRESETS[self.preset].items() if k != "description"}
        if "width" in explicit and "budget_widths" not in explicit:
            preset["budget_widths"] = []  # a width asked for is the width trained
        return validate_config({**DEFAULTS, **preset, **from_env, **explicit})

    def sources(self) -> list[str]:
        """Where to fetch the archive, in order: the configured sources or the official URL."""
        return list(self.source) if self.source else [OFFICIAL_URL]

    def group(self, name: str) -> dict[str, Any]:
        """The fields of one group ("run", "data", "train", "eval") as JSON-ready values."""
        return {
            k: v
            for k, v in self.model_dump(mode="json").items()
            if (type(self).model_fields[k].json_schema_extra or {}).get("group") == name
        }

    def overrides(self) -> dict[str, Any]:
        """Fields set explicitly (not from the preset): shown in the report."""
        return self.model_dump(exclude_none=True, exclude={"preset"})


def recipe_fields() -> list[str]:
    """The fields a frontier point's accuracy depends on: those of training and the TTA, but NOT_RECIPE."""
    fields = PipelineConfig.model_fields
    return [k for k, f in fields.items()
            if ((f.json_schema_extra or {}).get("group") == "train" or k == "tta") and k not in NOT_RECIPE]


def _frontier_point(text: str) -> tuple:
    """ "64x16=91.52" -> ("64", "16", "91.52"), "64x27[cutout=8]=92" -> ("64", "27", "92", {"cutout": "8"}):
    pydantic then checks the numbers' ranges and the recipe's fields."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*([\d.]+)\s*(?:\[([^\]]*)\])?\s*=\s*([\d.]+)\s*%?\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not WIDTHxEPOCHS=ACCURACY or WIDTHxEPOCHS[FIELD=VALUE;...]=ACCURACY, "
                         "e.g. 64x16=91.52 or 64x27[cutout=8]=92.04")
    width, epochs, recipe, accuracy = match.groups()
    return (width, epochs, accuracy) if recipe is None else (width, epochs, accuracy, parse_recipe(recipe))


def parse_recipe(text: str) -> dict[str, str]:
    """ "cutout=8; tta=1" -> {"cutout": "8", "tta": "1"}: a frontier point's changed fields, as written in its
    brackets (the values are typed when the point is validated)."""
    pairs = [part.split("=", 1) for part in text.split(";") if part.strip()]
    if any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise ValueError(f"{text!r}: the recipe in brackets is FIELD=VALUE;..., e.g. [cutout=8;tta=1]")
    return {k.strip(): v.strip() for k, v in pairs}


def _recipe_point(point: tuple) -> tuple:
    """A frontier point with its recipe's fields checked and their values typed as the fields are (an empty
    recipe is the configured one: the plain three numbers)."""
    if len(point) == 3 or not point[3]:
        return tuple(point[:3])
    allowed = recipe_fields()
    recipe = {}
    for name, value in point[3].items():
        if name not in allowed:
            raise ValueError(f"a frontier point's recipe cannot set {name!r}; it sets fields that change what a "
                             f"run computes: {', '.join(allowed)}")
        field = PipelineConfig.model_fields[name]
        try:
            recipe[name] = TypeAdapter(field.annotation).validate_python(value)
        except ValidationError as exc:
            raise ValueError(f"a frontier point's {name}={value!r}: {exc.errors()[0]['msg']}") from None
    return (*point[:3], dict(sorted(recipe.items())))


def validate_config(data: Mapping[str, Any]) -> PipelineConfig:
    """Build a config, turning pydantic's error into one ConfigError that names field and range."""
    try:
        return PipelineConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def allowed_range(name: str) -> str:
    """Human text for a field's constraints, e.g. '0 < epochs <= 1000', from the JSON schema the UI uses."""
    prop = _SCHEMA["properties"].get(name)
    if prop is None:
        return ""
    lower = next((f"{prop[k]} {s} " for k, s in (("exclusiveMinimum", "<"), ("minimum", "<=")) if k in prop), "")
    upper = next((f" {s} {prop[k]}" for k, s in (("exclusiveMaximum", "<"), ("maximum", "<=")) if k in prop), "")
    if lower or upper:
        return f"{lower}{name}{upper}"
    choices = prop.get("enum") or prop.get("items", {}).get("enum")
    return f"one of {', '.join(map(str, choices))}" if choices else ""


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err["type"] == "none_required":
            continue  # the "empty" side of an optional field: the other side's error says what is wrong
        # A location is (field, union branch, ...); the field's name is what a person typed.
        name = str(err["loc"][0]) if err["loc"] else "config"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = f" = {value!r}" if name != "config" and not isinstance(value, dict) else ""
        rng = allowed_range(name)
        parts.append(f"{name}{shown}: {msg}" + (f" (allowed: {rng})" if rng else ""))
    return "invalid configuration: " + "; ".join(parts)


_SCHEMA = PipelineConfig.model_json_schema()
