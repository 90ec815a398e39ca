from prefect import task
from prefect.cache_policies import NO_CACHE

from cifar_pipeline.registry.prediction_files import PredictSummary, score_folder


# Never cached: the folder's files and the champion change between runs.
@task(name="score-folder", cache_policy=NO_CACHE, persist_result=False)
def score_folder_task(folder: str, model: str, output_dir: str, output: str | None, top_k: int) -> PredictSummary:
    from prefect import get_run_logger

    logger = get_run_logger()
    return score_folder(folder, model, output_dir, output, top_k, progress=logger.info)
