from prefect import task
from prefect.cache_policies import NO_CACHE

from cifar_pipeline.budget import BudgetPlan, machine_key, measure_steps, plan_training
from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.dataset import DatasetRecord
from cifar_pipeline.extra_data import ExtraDataRecord
from cifar_pipeline.runtime import resolve_device
from cifar_pipeline.training import training_data


# The library keeps the measurement per machine and config; Prefect's cache would not see the machine.
@task(name="plan-budget", cache_policy=NO_CACHE, persist_result=False)
def budget_task(config: PipelineConfig, dataset: DatasetRecord, cache_dir: str,
                extra: ExtraDataRecord | None = None) -> BudgetPlan:
    device = resolve_device(config.device)
    return plan_training(config, dataset.archive_md5, cache_dir, machine_key(device),
                         lambda: measure_steps(config, dataset, device),
                         train_images=len(training_data(config, dataset, extra).y_train))
