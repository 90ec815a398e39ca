from prefect import task

from cifar_pipeline.data.download import ArchiveRecord, fetch_archive
from cifar_pipeline.errors import DownloadError

from .cache_policies import download_key


def retry_if_transient(_task, _task_run, state) -> bool:
    """Retry network trouble; a missing file or a wrong digest from a local copy won't fix itself."""
    try:
        state.result()
    except DownloadError as exc:
        return exc.transient
    except Exception:  # noqa: BLE001 - anything unexpected: one more try is cheap
        return True
    return False


@task(
    name="download",
    cache_key_fn=download_key,
    result_serializer="json",
    retries=3,
    retry_delay_seconds=[2, 4, 8],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
)
def download_task(sources: list[str], md5: str, cache_dir: str, timeout: float = 60.0) -> ArchiveRecord:
    return fetch_archive(sources, md5, cache_dir, timeout=timeout)
