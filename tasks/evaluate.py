from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.evaluation import EVALUATE, EvalRecord, evaluate, evaluation_inputs
from cifar_pipeline.training.records import TrainRecord

from .cache_policies import stage_task


@stage_task(EVALUATE, evaluation_inputs)
def evaluate_task(config: PipelineConfig, trained: TrainRecord, dataset: DatasetRecord, cache_dir: str) -> EvalRecord:
    return evaluate(config, trained, dataset, cache_dir)
