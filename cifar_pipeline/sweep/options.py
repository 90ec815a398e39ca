"""A sweep's own options, apart from the study code: the CLI builds its flags from them without
importing Optuna or torch."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SweepOptions(BaseModel):
    """What a sweep adds to the pipeline configuration (CLI options and `cifar-sweep` flow parameters)."""

    trials: int = Field(8, ge=1, le=10000, description="Trials in the study in all (a resumed study counts "
                                                           "the ones it has).")
    parallel: int = Field(2, ge=1, le=1024, description="Trials running at once.")
    space: str = Field("", description="Search space TOML file; empty: the preset's default space.")
    study: str = Field("", description="Optuna study name; empty: sweep-<preset>.")
    storage: str = Field("", description="Optuna storage: a database URL (postgresql://..., sqlite:///...) or "
                                         "a journal file path; empty: <output_dir>/sweeps/optuna.journal.")
    trial_deployment: str = Field("", description="Run trials as flow runs of this deployment on its work pool "
                                                  "(e.g. cifar-trial/trial); empty: local processes.")
