"""The doctor flow: download -> build dataset -> doctor, for a configuration that does not learn."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from cifar_pipeline import layout
from cifar_pipeline.access import check_access
from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.download import check_sources
from flows.pipeline import _Steps
from tasks import build_dataset_task, doctor_task, download_task


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
    cfg = config.resolved()
    check_access(cfg)
    cache = layout.cache_dir(cfg)
    sources = cfg.sources()
    check_sources(sources, cfg.md5, cache)
    run_id = layout.new_run_id(flow_run.get_id() or "local")
    folder = layout.doctor_dir(cfg, run_id)
    get_run_logger().info("doctor %s: preset %s, model %s, lr %g; report in %s", run_id, cfg.preset, cfg.model,
                          cfg.lr, folder)
    steps = _Steps(layout.results_dir(cfg))
    retries = cfg.download_retries
    download = download_task.with_options(
        retries=retries, retry_delay_seconds=[cfg.retry_delay_s * 2**i for i in range(retries)] or 0
    )
    archive = steps.run(download, sources=sources, md5=cfg.md5, cache_dir=str(cache), timeout=cfg.download_timeout_s)
    dataset = steps.run(build_dataset_task, archive=archive, cache_dir=str(cache))
    report = steps.run(doctor_task, config=cfg, dataset=dataset, folder=str(folder),
                       title=f"Doctor {run_id}: preset {cfg.preset}")
    get_run_logger().info("doctor verdict: %s; report at %s", report.status, report.path)
    return DoctorSummary(status=report.status, checks=report.checks, lr_range=report.lr_range,
                         configured_lr=report.configured_lr, report=report.path, run_id=run_id,
                         flow_run_id=flow_run.get_id(), preset=cfg.preset, seconds=time.perf_counter() - t0)
