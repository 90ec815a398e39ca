from prefect.artifacts import create_progress_artifact, update_progress_artifact

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.data.extra import ExtraDataRecord
from cifar_pipeline.errors import PipelineError
from cifar_pipeline.training.deadline import Deadline
from cifar_pipeline.training.records import TRAIN, EpochMetrics, TrainRecord, training_inputs

from .cache_policies import stage_task


def retry_unless_expected(_task, _task_run, state) -> bool:
    """Divergence or bad config repeat on retry; an I/O hiccup does not, and training resumes."""
    try:
        state.result()
    except PipelineError:
        return False
    except Exception:  # noqa: BLE001
        return True
    return False


@stage_task(
    TRAIN, training_inputs,
    retries=1,
    retry_condition_fn=retry_unless_expected,
    task_run_name="train-{config.model}-{config.epochs}ep",
)
def train_task(
    config: PipelineConfig, dataset: DatasetRecord, cache_dir: str, extra: ExtraDataRecord | None = None,
    deadline: Deadline | None = None,
) -> TrainRecord:
    from cifar_pipeline.training.loop import train

    progress = create_progress_artifact(0.0, description="Training progress (epochs done)")

    def on_epoch(metrics: EpochMetrics, total: int) -> None:
        update_progress_artifact(progress, 100.0 * metrics.epoch / total)

    return train(config, dataset, cache_dir, on_epoch=on_epoch, extra=extra, deadline=deadline)
