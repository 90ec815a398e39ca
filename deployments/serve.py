"""`cifar-pipeline serve`: register the deployments of prefect.yaml and execute their runs here.

The single-machine alternative to a work pool and a worker: the same schedules, parameters and
concurrency limits, read from the same file, served by `prefect.serve`. It needs a Prefect server
(`prefect server start`), because an ephemeral one cannot schedule runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from cifar_pipeline.errors import ConfigError
from flows.doctor import doctor
from flows.maintenance import maintenance
from flows.pipeline import cifar_pipeline
from flows.predict import predict_folder

PREFECT_YAML = Path(__file__).with_name("prefect.yaml")
# What `serve` runs; sweeps are left to work pools (their trials need workers), never served.
FLOWS = {"flows/pipeline.py:cifar_pipeline": cifar_pipeline, "flows/doctor.py:doctor": doctor,
         "flows/predict.py:predict_folder": predict_folder, "flows/maintenance.py:maintenance": maintenance}


def load_deployments(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The deployments `serve` runs here: all of prefect.yaml but the sweeps."""
    specs = yaml.safe_load(path.read_text())["deployments"]
    return [s for s in specs if s["entrypoint"] in FLOWS]


def to_runner_deployment(spec: dict[str, Any]):
    schedules = [Cron(s["cron"], timezone=s.get("timezone", "UTC"), active=s.get("active", True))
                 for s in spec.get("schedules") or []]
    limit = spec.get("concurrency_limit")
    concurrency = None
    if limit:
        concurrency = ConcurrencyLimitConfig(
            limit=limit["limit"],
            collision_strategy=ConcurrencyLimitStrategy(limit.get("collision_strategy", "ENQUEUE")),
        )
    return FLOWS[spec["entrypoint"]].to_deployment(
        name=spec["name"], description=spec.get("description"), tags=spec.get("tags"),
        parameters=spec.get("parameters"), schedules=schedules, concurrency_limit=concurrency,
        enforce_parameter_schema=spec.get("enforce_parameter_schema", True),
    )


def pool_bound(specs: list[dict[str, Any]]) -> list[str]:
    """Deployments of these names that a work pool already executes (applied from prefect.yaml).

    `serve` would take over their schedule while the pool's workers still pick up their runs and
    fail to find the code, so the two ways of running must not share deployment names.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    bound = []
    with get_client(sync_client=True) as client:
        for spec in specs:
            full_name = f"{FLOWS[spec['entrypoint']].name}/{spec['name']}"
            try:
                deployment = client.read_deployment_by_name(full_name)
            except ObjectNotFound:
                continue
            if deployment.work_pool_name:
                bound.append(f"{full_name} (work pool {deployment.work_pool_name})")
    return bound


def client_env(specs: list[dict[str, Any]]) -> dict[str, str]:
    """The environment prefect.yaml gives every flow-run process (client retries, heartbeats)."""
    env: dict[str, str] = {}
    for spec in specs:
        env.update((spec.get("work_pool") or {}).get("job_variables", {}).get("env") or {})
    return {k: str(v) for k, v in env.items()}


def main(limit: int | None = None) -> None:
    specs = load_deployments()
    # Served runs are subprocesses of this one: they get the same client settings as a worker's runs,
    # unless this process was started with its own values.
    for key, value in client_env(specs).items():
        os.environ.setdefault(key, value)
    conflicts = pool_bound(specs)
    if conflicts:
        raise ConfigError(
            "these deployments already run on a work pool: " + ", ".join(conflicts) + ". Use the worker, or "
            "remove them first (prefect deployment delete NAME) to serve from this process instead."
        )
    serve(*(to_runner_deployment(spec) for spec in specs), limit=limit)
