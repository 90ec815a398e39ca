from prefect import task

from cifar_pipeline.data.dataset import DatasetRecord, build_dataset
from cifar_pipeline.data.download import ArchiveRecord

from .cache_policies import dataset_key


@task(name="build-dataset", cache_key_fn=dataset_key, result_serializer="json")
def build_dataset_task(archive: ArchiveRecord, cache_dir: str) -> DatasetRecord:
    return build_dataset(archive.path, archive.md5, cache_dir)
