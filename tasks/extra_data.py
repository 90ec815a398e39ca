from prefect import task
from prefect.cache_policies import NO_CACHE

from cifar_pipeline.data.extra import (
    EXTRA,
    ExtraDataRecord,
    ExtraManifest,
    build_extra_data,
    extra_data_inputs,
    scan_folders,
)

from .cache_policies import stage_task


# Never cached: hashing the files is how a grown folder is noticed.
@task(name="scan-extra-data", cache_policy=NO_CACHE, persist_result=False)
def scan_extra_data_task(folders: list[str], classes: list[str]) -> ExtraManifest:
    return scan_folders(folders, classes)


@stage_task(EXTRA, extra_data_inputs)
def extra_data_task(manifest: ExtraManifest, policy: str, max_pixels: int, cache_dir: str) -> ExtraDataRecord:
    return build_extra_data(manifest, cache_dir, policy=policy, max_pixels=max_pixels)
