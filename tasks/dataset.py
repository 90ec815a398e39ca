from cifar_pipeline.data.dataset import DATASET, DatasetRecord, build_dataset, dataset_inputs
from cifar_pipeline.data.download import ArchiveRecord

from .cache_policies import stage_task


@stage_task(DATASET, dataset_inputs)
def build_dataset_task(archive: ArchiveRecord, cache_dir: str) -> DatasetRecord:
    return build_dataset(archive, cache_dir)
