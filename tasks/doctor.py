from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.report.report import inline_images

if TYPE_CHECKING:
    from cifar_pipeline.doctor.report import DoctorReport


# Not cached by Prefect: the `doctor` command asks because something looks wrong now. A training
# run's quick checks pass `cache_dir`, and the library reuses an identical earlier run's result.
@task(name="doctor", cache_policy=NO_CACHE, persist_result=False)
def doctor_task(config: PipelineConfig, dataset: DatasetRecord, folder: str, title: str, quick: bool = False,
                prefix: str = "doctor", artifact_key: str = "cifar-doctor", cache_dir: str | None = None,
                ) -> DoctorReport:
    from cifar_pipeline.doctor.report import doctor_dataset

    report = doctor_dataset(config, dataset, folder, title, quick=quick, prefix=prefix, cache_dir=cache_dir)
    create_markdown_artifact(inline_images(report.markdown, report.folder), key=artifact_key,
                             description=f"{title}: {report.status}")
    create_table_artifact([{"check": name, **verdict} for name, verdict in report.checks.items()],
                          key=f"{artifact_key}-checks", description=f"{title}: checks")
    return report
