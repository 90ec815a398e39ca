from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.data.download import ArchiveRecord
from cifar_pipeline.data.extra import ExtraDataRecord
from cifar_pipeline.evaluation import EvalRecord
from cifar_pipeline.registry.champion import PromotionDecision
from cifar_pipeline.report.figures import FIGURES, FiguresRecord, figures, figures_inputs
from cifar_pipeline.report.report import ReportRecord, inline_images, write_report
from cifar_pipeline.training.budget import BudgetPlan
from cifar_pipeline.training.records import TrainRecord

from .cache_policies import stage_task


@stage_task(FIGURES, figures_inputs)
def figures_task(config: PipelineConfig, trained: TrainRecord, evaluated: EvalRecord, dataset: DatasetRecord,
                 cache_dir: str) -> FiguresRecord:
    return figures(config, trained, evaluated, dataset, cache_dir)


# Never cached: it is cheap, and a changed template must show in the next run.
@task(name="report", cache_policy=NO_CACHE, persist_result=False)
def report_task(
    run_dir: str, run_id: str, cfg: PipelineConfig, requested: PipelineConfig, archive: ArchiveRecord,
    dataset: DatasetRecord, trained: TrainRecord, evaluated: EvalRecord, timings: dict[str, float],
    states: dict[str, str], decision: PromotionDecision, extra: ExtraDataRecord | None = None, note: str = "",
    diagnosis: str = "", budget: BudgetPlan | None = None, figures: FiguresRecord | None = None,
) -> ReportRecord:
    report = write_report(run_dir, run_id, cfg, requested, archive, dataset, trained, evaluated, timings, states,
                          decision, extra=extra, note=note, diagnosis=diagnosis, budget=budget, figures=figures)
    create_markdown_artifact(inline_images(report.markdown, report.run_dir), key="cifar-report",
                             description=f"Run {run_id}: test accuracy {evaluated.accuracy:.2%}")
    create_table_artifact(evaluated.per_class_frame().to_dict(orient="records"), key="cifar-per-class",
                          description=f"Run {run_id}: per-class test accuracy")
    return report
