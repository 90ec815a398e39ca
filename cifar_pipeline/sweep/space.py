"""A sweep's search space: data in a TOML file, checked against the configuration before anything runs.

    [lr]                         # a float range; `log = true` samples on a log scale
    low = 0.5
    high = 3.0
    log = true

    [width]                      # an int range (the field is an int), optional `step`
    low = 16
    high = 48
    step = 8

    [optimizer]                  # a list of choices
    choices = ["sgd", "muon"]

Every name must be a configuration field, every range non-empty, and every value it can produce
inside the field's allowed range; a space that breaks one of these is a ConfigError naming it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from ..config import PipelineConfig, validate_config
from ..errors import ConfigError

# Fields a trial must not change: where data comes from, where results go, and the held-out split.
FIXED_FIELDS = {"preset", "source", "md5", "output_dir", "extra_data", "validation_images", "device",
                "train_subset", "test_subset", "promote_margin"}


class Suggester(Protocol):  # optuna.trial.Trial, without importing Optuna here
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class Dimension:
    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None
    integer: bool = False

    def suggest(self, trial: Suggester) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name}: one of {list(self.choices)}"
        scale = ", log scale" if self.log else (f", step {self.step}" if self.step else "")
        return f"{self.name}: {self.low} .. {self.high}{scale}"


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]
    source: str

    def suggest(self, trial: Suggester) -> dict[str, Any]:
        return {d.name: d.suggest(trial) for d in self.dimensions}


def default_space_file(preset: str) -> Path:
    path = Path(str(resources.files(__package__).joinpath("spaces", f"{preset}.toml")))
    if not path.is_file():
        shipped = sorted(p.stem for p in path.parent.glob("*.toml"))
        raise ConfigError(f"no default search space for preset {preset!r} (shipped: {', '.join(shipped)}); "
                          "pass one with --space FILE")
    return path


def load_space(path: str | Path | None, base: PipelineConfig) -> SearchSpace:
    """Read and check a space file (the preset's default when `path` is empty) against a resolved config."""
    path = Path(path).expanduser() if path else default_space_file(base.preset)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"search space file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"search space {path}: {exc}") from None
    return parse_space(data, base, str(path))


def parse_space(data: dict[str, Any], base: PipelineConfig, source: str = "space") -> SearchSpace:
    if not data:
        raise ConfigError(f"search space {source}: no fields to search")
    dims = tuple(_dimension(name, spec, base, source) for name, spec in data.items())
    return SearchSpace(dims, source)


def _dimension(name: str, spec: Any, base: PipelineConfig, source: str) -> Dimension:
    where = f"search space {source}: {name}"
    fields = PipelineConfig.model_fields
    if name not in fields:
        raise ConfigError(f"{where}: unknown field (see `cifar-pipeline config` for the fields)")
    if name in FIXED_FIELDS:
        raise ConfigError(f"{where}: cannot be searched (all trials must share it)")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a table with low/high or choices")
    unknown = set(spec) - {"low", "high", "log", "step", "choices"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (use low, high, log, step, choices)")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: empty list of choices")
        dim = Dimension(name, choices=tuple(choices))
    else:
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where}: needs low and high, or choices")
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise ConfigError(f"{where}: low and high must be numbers")
        if not low < high:
            raise ConfigError(f"{where}: empty range (low {low} must be below high {high})")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise ConfigError(f"{where}: a log-scale range needs low > 0")
        if log and spec.get("step"):
            raise ConfigError(f"{where}: step and log cannot be combined")
        integer = _is_int_field(name)
        if integer and not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"{where}: an integer field needs integer low and high")
        dim = Dimension(name, low=low, high=high, log=log, step=spec.get("step"), integer=integer)
    for value in dim.extremes():
        try:
            validate_config({**base.model_dump(exclude_none=True), name: value})
        except ConfigError as exc:
            raise ConfigError(f"{where}: value {value!r} is not allowed ({str(exc).removeprefix('invalid configuration: ')})") from None
    return dim


def _is_int_field(name: str) -> bool:
    schema = PipelineConfig.model_json_schema()["properties"].get(name, {})
    return schema.get("type") == "integer"
