from prefect import task
from prefect.cache_policies import NO_CACHE

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.data.extra import ExtraDataRecord
from cifar_pipeline.training.budget import BudgetPlan, machine_key, measure_steps, plan_training


# Not cached by Prefect: the measurements it plans from are a library stage keyed by machine and config,
# and planning from them is cheap.
@task(name="plan-budget", cache_policy=NO_CACHE, persist_result=False)
def budget_task(config: PipelineConfig, dataset: DatasetRecord, cache_dir: str,
                extra: ExtraDataRecord | None = None) -> BudgetPlan:
    from cifar_pipeline.training.runtime import resolve_device
    from cifar_pipeline.training.step import training_data

    device = resolve_device(config.device)
    return plan_training(config, dataset.content_digest(), cache_dir, machine_key(device),
                         lambda planned, give_up_above: measure_steps(planned, dataset, device, give_up_above),
                         train_images=len(training_data(config, dataset, extra).y_train))
