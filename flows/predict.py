"""The `cifar-predict` flow: score every image in a folder with the champion into a CSV (batch scoring)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from cifar_pipeline.access import check_places
from cifar_pipeline.preflight import check_output_dir
from cifar_pipeline.registry.prediction_files import PredictSummary
from tasks.predict import score_folder_task


@flow(name="cifar-predict", log_prints=True)
def predict_folder(folder: str, model: str = "champion", output_dir: str = "outputs", output: str = "",
                   top_k: int = 5) -> PredictSummary:
    """Classify every image file under `folder` (searched recursively) and write one CSV.

    model: champion, a run id of the registry, or a model file. output: the CSV to write; empty
    means <output_dir>/predictions/<time>-<folder name>.csv. Files that cannot be read get an error
    row; the run still completes (with a warning), so one bad upload does not hide the other results.
    """
    # Anyone with the UI sets these paths: the worker's allowed folders apply before anything is read.
    check_places([("folder", folder), ("output_dir", output_dir), ("output", output or output_dir)])
    check_output_dir(output_dir)
    summary = score_folder_task(folder=folder, model=model, output_dir=output_dir, output=output or None,
                                top_k=top_k)
    if summary.failed:
        get_run_logger().warning("%d of %d files could not be read; see the error column of %s",
                                 summary.failed, summary.images, summary.output)
    create_markdown_artifact(
        f"Scored **{summary.images - summary.failed}** of {summary.images} images from `{folder}` "
        f"({summary.failed} unreadable) at {summary.images_per_second:.0f} images/s with model "
        f"`{summary.model_file}` (sha256 `{summary.model_sha256[:16]}`).\n\nPredictions: `{summary.output}`",
        key="cifar-predictions", description=f"Predictions for {folder}")
    return summary
