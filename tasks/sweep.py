"""Sweep tasks: run the trials (local processes or flow runs on a work pool), one trial, the report."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.report.report import inline_images
from cifar_pipeline.sweep.leaderboard import SweepReport, Winner, write_sweep_report
from cifar_pipeline.sweep.local_trials import LocalLauncher
from cifar_pipeline.sweep.space import SearchSpace
from cifar_pipeline.sweep.study import TrialOutcome, leaderboard, open_study, run_trial, run_trials

from .train import retry_unless_expected

# Seconds between looks at the trials' flow runs; workers poll on their own (PREFECT_WORKER_QUERY_SECONDS).
POOL_POLL_S = 2.0


class PoolTrial:
    """A trial running as a flow run of the trial deployment, somewhere a worker picked it up."""

    def __init__(self, flow_run_id) -> None:
        self.flow_run_id = flow_run_id

    def poll(self) -> str | None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(self.flow_run_id)
        if run.state is None or not run.state.is_final():
            return None
        # A failed or crashed child does not fail this flow on its own (Prefect issue 19479): say why here.
        return "" if run.state.is_completed() else f"flow run {run.name} {run.state.name}: {run.state.message}"


def pool_launcher(deployment: str, study: str, storage: str, config: PipelineConfig):
    from prefect.deployments import run_deployment

    def launch(number: int) -> PoolTrial:
        # The key makes a retried or restarted sweep find this trial's flow run instead of starting another.
        run = run_deployment(deployment, parameters={"config": config.model_dump(mode="json", exclude_none=True),
                                                      "study": study, "storage": storage, "number": number},
                             timeout=0, idempotency_key=f"{study}@{storage}#{number}",
                             flow_run_name=f"{study}-trial-{number}")
        return PoolTrial(run.id)

    return launch


@task(name="run-trials", cache_policy=NO_CACHE, persist_result=False)
def run_trials_task(study: str, storage: str, config: PipelineConfig, space: SearchSpace, trials: int,
                    parallel: int, dataset: DatasetRecord, cache_dir: str, log_dir: str,
                    trial_deployment: str = "") -> list[TrialOutcome]:
    opened = open_study(study, storage, seed=config.seed)
    if trial_deployment:
        return run_trials(opened, space, config, trials, parallel,
                          pool_launcher(trial_deployment, study, storage, config), poll_s=POOL_POLL_S)
    launcher = LocalLauncher(study, storage, dataset, cache_dir, Path(log_dir), parallel)
    try:
        return run_trials(opened, space, config, trials, parallel, launcher)
    finally:
        launcher.stop()


@task(name="trial", cache_policy=NO_CACHE, persist_result=False, retries=1,
      retry_condition_fn=retry_unless_expected, task_run_name="trial-{number}")
def trial_task(study: str, storage: str, number: int, dataset: DatasetRecord, cache_dir: str) -> TrialOutcome:
    return run_trial(open_study(study, storage), number, dataset, cache_dir)


@task(name="sweep-report", cache_policy=NO_CACHE, persist_result=False)
def sweep_report_task(folder: str, study: str, storage: str, config: PipelineConfig, space_text: str,
                      winner: Winner | None, seconds: float) -> SweepReport:
    opened = open_study(study, storage, seed=config.seed)
    board = leaderboard(opened)
    report = write_sweep_report(folder, opened, storage, config, space_text, board, winner, seconds)
    key = "".join(c if c.isalnum() else "-" for c in study.lower())
    create_markdown_artifact(inline_images(report.markdown, report.folder), key=f"sweep-{key}"[:100],
                             description=f"Sweep {study}: leaderboard and winner")
    create_table_artifact(board.astype(object).where(board.notna(), None).to_dict(orient="records"),
                          key=f"sweep-{key}-leaderboard"[:100], description=f"Sweep {study}: leaderboard")
    return report
