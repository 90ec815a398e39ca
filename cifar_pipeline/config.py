"""The one configuration model shared by the CLI, the flow parameters (the UI form) and the report.

Every field except `preset` may be left empty (None): it then takes the preset's value, and the
preset takes the value from `[defaults]` in presets.toml. `resolved()` fills the gaps, so a form
that submits only `{"preset": "cpu"}` and one that spells out every field validate the same way.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

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


def _field(group: str, description: str, **constraints: Any) -> Any:
    return Field(default=None, description=description, json_schema_extra={"group": group}, **constraints)


class PipelineConfig(BaseModel):
    """Everything that decides what a run does. Empty fields take the preset's value."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Pipeline configuration")

    preset: PresetName = Field(
        default="seed",
        description="Named recipe the other fields start from: seed (the blog recipe), smoke "
        "(one quick epoch on a subset), cpu (best accuracy in ~15 min on 2 cores), fast (GPU).",
        json_schema_extra={"group": "run"},
    )
    # --- run: where and how; never changes a result
    output_dir: str | None = _field("run", "Folder for the data cache and the run folders.", min_length=1)
    device: Literal["auto", "cpu", "cuda"] | None = _field(
        "run", "auto picks CUDA when present, else the CPU."
    )
    seed: int | None = _field("train", "Seed for weight init, data order and augmentation.", ge=0, le=2**31 - 1)
    # --- data
    source: list[str] | None = _field(
        "data",
        "Where to get cifar-10-python.tar.gz: URLs (http, https, file://) or local paths, tried in "
        f"order. Empty: ${SOURCE_ENV} if set, else the official URL.",
    )
    md5: str | None = _field(
        "data", f"Expected md5 of the archive. Empty: ${MD5_ENV} if set, else the official digest.",
        pattern=r"^[0-9a-f]{32}$",
    )
    train_subset: int | None = _field("train", "Train on the first N training images (0 = all 50000).", ge=0, le=50000)
    test_subset: int | None = _field("eval", "Evaluate on the first N test images (0 = all 10000).", ge=0, le=10000)
    download_retries: int | None = _field("run", "Retries of a failed download.", ge=0, le=20)
    retry_delay_s: float | None = _field("run", "First retry delay in seconds; doubles each retry.", ge=0, le=3600)
    download_timeout_s: float | None = _field(
        "run", "Seconds a download may stall (no bytes arriving) before it counts as failed.", gt=0, le=3600
    )
    # --- model
    model: ModelName | None = _field("train", "Network: seed_net (the blog's Net) or airnet (airbench-style).")
    width: int | None = _field("train", "airnet base width (64 = airbench94); seed_net ignores it.", ge=4, le=512)
    # --- optimisation
    epochs: float | None = _field("train", "Training epochs; a fraction trains part of the last epoch.", gt=0, le=1000)
    batch_size: int | None = _field("train", "Training batch size.", ge=1, le=8192)
    optimizer: Literal["sgd", "muon"] | None = _field(
        "train", "sgd: SGD for every weight; muon: Muon for conv filters, SGD for biases and the head."
    )
    lr: float | None = _field("train", "Peak learning rate of the SGD weights (mean-reduced loss).", gt=0, le=100)
    momentum: float | None = _field("train", "SGD momentum (0 = plain SGD).", ge=0, lt=1)
    nesterov: bool | None = _field("train", "Nesterov momentum (needs momentum > 0).")
    weight_decay: float | None = _field("train", "L2 weight decay as in torch.optim.SGD.", ge=0, le=1)
    bias_lr_scale: float | None = _field(
        "train", "BatchNorm biases get lr x this and weight decay / this.", gt=0, le=1000
    )
    muon_lr: float | None = _field("train", "Muon: peak step size of the normalised conv filters.", gt=0, le=10)
    muon_momentum: float | None = _field("train", "Muon: Nesterov momentum of the conv filters.", ge=0, lt=1)
    label_smoothing: float | None = _field("train", "Cross-entropy label smoothing.", ge=0, lt=1)
    schedule: Literal["constant", "triangle"] | None = _field(
        "train", "Learning-rate schedule: constant, or linear up then down (triangle)."
    )
    lr_start: float | None = _field("train", "Triangle: lr at step 0, as a fraction of lr.", ge=0, le=1)
    lr_peak_at: float | None = _field(
        "train", "Triangle: where the peak lies, as a fraction of training (0: decay from the start).", ge=0, lt=1
    )
    lr_end: float | None = _field("train", "Triangle: lr at the last step, as a fraction of lr.", ge=0, le=1)
    ema: bool | None = _field("train", "Lookahead weight averaging from epoch 3 on (airbench).")
    whiten_bias_epochs: int | None = _field(
        "train", "airnet: epochs during which the whitening layer's bias trains.", ge=0, le=1000
    )
    # --- data path and augmentation
    normalize: Literal["unit", "standardize"] | None = _field(
        "train", "unit: pixels scaled to [0, 1] (the blog); standardize: per-channel mean/std."
    )
    flip: Literal["none", "random", "alternate"] | None = _field(
        "train", "Horizontal flips: none, random per image, or alternate (each image flips every other epoch)."
    )
    translate: int | None = _field("train", "Random translation in pixels (reflect padding).", ge=0, le=8)
    cutout: int | None = _field("train", "Cutout square size in pixels (0 = off).", ge=0, le=32)
    # --- speed; these change speed, not the method
    channels_last: bool | None = _field("train", "Use channels-last memory layout.")
    precision: Literal["fp32", "bf16", "fp16"] | None = _field(
        "train", "Autocast precision for training and evaluation: bf16 (CUDA or CPU), fp16 (CUDA only)."
    )
    compile: bool | None = _field("train", "torch.compile the model (CUDA only; the CPU gains nothing).")
    # --- evaluation
    tta: int | None = _field("eval", "Test-time augmentation: 0 none, 1 flip, 2 flip + 1-pixel translations.", ge=0, le=2)
    eval_batch_size: int | None = _field("eval", "Batch size for evaluation.", ge=1, le=65536)
    # --- champion
    promote_margin: float | None = _field(
        "run", "A run replaces the champion only if its accuracy beats it by more than this (0-1).", ge=0, le=1
    )

    @field_validator("source", mode="before")
    @classmethod
    def _split_sources(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if isinstance(value, list):
            value = [v for v in value if isinstance(v, str) and v.strip()] or None
        return value

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
        return validate_config({**DEFAULTS, **preset, **from_env, **explicit})

    def sources(self) -> list[str]:
        """Where to fetch the archive, in order: the configured sources or the official URL."""
        from .download import OFFICIAL_URL

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


def validate_config(data: Mapping[str, Any]) -> PipelineConfig:
    """Build a config, turning pydantic's error into one ConfigError that names field and range."""
    try:
        return PipelineConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def allowed_range(name: str) -> str:
    """Human text for a field's constraints, e.g. '0 < epochs <= 1000'."""
    field = PipelineConfig.model_fields.get(name)
    if field is None:
        return ""
    bounds = {}
    for meta in field.metadata:
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(meta, attr, None) is not None:
                bounds[symbol] = getattr(meta, attr)
    lower = next(((f"{bounds[s]} {'<' if s == '>' else '<='} ") for s in (">", ">=") if s in bounds), "")
    upper = next(((f" {s} {bounds[s]}") for s in ("<", "<=") if s in bounds), "")
    if lower or upper:
        return f"{lower}{name}{upper}"
    schema = PipelineConfig.model_json_schema()["properties"].get(name, {})
    choices = [opt.get("enum") for opt in schema.get("anyOf", [schema]) if opt.get("enum")]
    return f"one of {', '.join(map(str, choices[0]))}" if choices else ""


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = f" = {value!r}" if name != "config" and not isinstance(value, dict) else ""
        rng = allowed_range(name)
        parts.append(f"{name}{shown}: {msg}" + (f" (allowed: {rng})" if rng else ""))
    return "invalid configuration: " + "; ".join(parts)
