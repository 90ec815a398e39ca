from prefect import task
from prefect.cache_policies import NO_CACHE

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.evaluation import EvalRecord
from cifar_pipeline.registry.champion import PromotionDecision, registry_dir, update_registry
from cifar_pipeline.training.records import TrainRecord


# Every run decides anew against the current champion, so this is never cached.
@task(name="promote", cache_policy=NO_CACHE, persist_result=False)
def promote_task(
    run_id: str, cfg: PipelineConfig, trained: TrainRecord, evaluated: EvalRecord, dataset: DatasetRecord,
    seconds: float,
) -> PromotionDecision:
    return update_registry(registry_dir(cfg), run_id, cfg, trained, evaluated, dataset, seconds)
