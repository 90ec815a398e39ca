from uuid import NAMESPACE_URL, uuid4, uuid5

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.evaluation import EvalRecord
from cifar_pipeline.registry.champion import PromotionDecision, registry_dir, update_registry
from cifar_pipeline.registry.regression import Regression, find_regression
from cifar_pipeline.training.records import TrainRecord

REGRESSION_EVENT = "cifar-pipeline.model.regression"  # deployments/automations.yaml matches this name


# Every run decides anew against the current champion, so this is never cached.
@task(name="promote", cache_policy=NO_CACHE, persist_result=False)
def promote_task(
    run_id: str, cfg: PipelineConfig, trained: TrainRecord, evaluated: EvalRecord, dataset: DatasetRecord,
    seconds: float,
) -> PromotionDecision:
    decision = update_registry(registry_dir(cfg), run_id, cfg, trained, evaluated, dataset, seconds)
    regression = find_regression(decision, cfg.regression_alert_points)
    if regression is not None:
        get_run_logger().warning("possible regression: %s", regression.summary())
        emit_regression(run_id, cfg, evaluated, regression)
    return decision


def emit_regression(run_id: str, cfg: PipelineConfig, evaluated: EvalRecord, regression: Regression) -> None:
    # One id per flow run and champion: if this task ever runs again in the same flow run (a retry),
    # the server drops the repeated event by its id, so the alert goes out once.
    parent = flow_run.get_id()
    event_id = uuid5(NAMESPACE_URL, f"{REGRESSION_EVENT}/{parent}/{regression.champion_run_id}") if parent else uuid4()
    emit_event(
        event=REGRESSION_EVENT,
        resource={"prefect.resource.id": f"cifar-pipeline.model.{run_id}", "prefect.resource.name": run_id,
                  "cifar-pipeline.accuracy": f"{regression.accuracy:.4f}",
                  "cifar-pipeline.champion-accuracy": f"{regression.champion_accuracy:.4f}"},
        related=[{"prefect.resource.id": f"cifar-pipeline.model.{regression.champion_run_id}",
                  "prefect.resource.role": "champion", "prefect.resource.name": regression.champion_run_id}],
        payload={**regression.model_dump(), "run_id": run_id, "preset": cfg.preset, "model": cfg.model,
                 "test_images": evaluated.n_images, "accuracy_text": f"{regression.accuracy:.2%}",
                 "champion_accuracy_text": f"{regression.champion_accuracy:.2%}",
                 "drop_text": f"{regression.drop_points:.2f}", "summary": regression.summary()},
        id=event_id,
    )
