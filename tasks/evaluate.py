from prefect import task

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.evaluation import EvalRecord, evaluate
from cifar_pipeline.training.loop import TrainRecord

from .cache_policies import evaluate_key


@task(name="evaluate", cache_key_fn=evaluate_key, result_serializer="json")
def evaluate_task(config: PipelineConfig, trained: TrainRecord, dataset: DatasetRecord, cache_dir: str) -> EvalRecord:
    return evaluate(config, trained, dataset, cache_dir)
