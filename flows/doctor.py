"""The doctor flow: download -> build dataset -> doctor, for a configuration that does not learn."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from cifar_pipeline import layout
from cifar_pipeline.config import PipelineConfig
from flows.steps import begin, fetch_dataset
from tasks import doctor_task


class DoctorSummary(BaseModel):
    status: str  # the worst check: pass, warn or fail
    checks: dict[str, dict[str, str]]
    lr_range: list[float] | None
    configured_lr: float
    report: str
    run_id: str
    flow_run_id: str | None
    preset: str
    seconds: float


@flow(name="cifar-doctor", log_prints=True)
def doctor(config: PipelineConfig = PipelineConfig()) -> DoctorSummary:
    """Check why a configuration does not learn: data, start, one batch, gradients, learning rate.

    A minute or two on a CPU; the verdict and figures are in the run's artifacts and report.
    """
    t0 = time.perf_counter()
    start = begin(config, layout.doctor_dir)
    cfg, run_id, folder = start.cfg, start.run_id, start.folder
    get_run_logger().info("doctor %s: preset %s, model %s, lr %g; report in %s", run_id, cfg.preset, cfg.model,
                          cfg.lr, folder)
    _, dataset = fetch_dataset(start)
    report = start.steps.run(doctor_task, config=cfg, dataset=dataset, folder=str(folder),
                       title=f"Doctor {run_id}: preset {cfg.preset}")
    get_run_logger().info("doctor verdict: %s; report at %s", report.status, report.path)
    return DoctorSummary(status=report.status, checks=report.checks, lr_range=report.lr_range,
                         configured_lr=report.configured_lr, report=report.path, run_id=run_id,
                         flow_run_id=flow_run.get_id(), preset=cfg.preset, seconds=time.perf_counter() - t0)
