from cifar_pipeline.data.download import DOWNLOAD, ArchiveRecord, archive_inputs, fetch_archive
from cifar_pipeline.errors import DownloadError

from .cache_policies import stage_task


def retry_if_transient(_task, _task_run, state) -> bool:
    """Retry network trouble; a missing file or a wrong digest from a local copy won't fix itself."""
    try:
        state.result()
    except DownloadError as exc:
        return exc.transient
    except Exception:  # noqa: BLE001 - anything unexpected: one more try is cheap
        return True
    return False


@stage_task(
    DOWNLOAD, archive_inputs,
    retries=3,
    retry_delay_seconds=[2, 4, 8],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
)
def download_task(sources: list[str], md5: str, cache_dir: str, timeout: float = 60.0) -> ArchiveRecord:
    return fetch_archive(sources, md5, cache_dir, timeout=timeout)
