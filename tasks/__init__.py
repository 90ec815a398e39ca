"""Prefect tasks: each calls one cifar_pipeline function and adds retries, caching and artifacts.

A task whose library function needs torch or matplotlib imports it in its body, and the records,
stages and keys it imports at the top load without them: a rerun that every cache serves never
imports torch (2.4 s on a 2-core Zen 5) and imports matplotlib only for the trend of runs.
"""

import logging

import prefect  # noqa: F401  (configures Prefect logging before we copy its handlers)

from .budget import budget_task
from .dataset import build_dataset_task
from .doctor import doctor_task
from .download import download_task
from .evaluate import evaluate_task
from .extra_data import extra_data_task, scan_extra_data_task
from .registry import promote_task
from .report import figures_task, report_task
from .train import train_task


def _route_library_logs() -> None:
    # Send the library's own log lines to the run's log in the UI, as PREFECT_LOGGING_EXTRA_LOGGERS
    # would, but also in worker processes that imported Prefect before this package.
    library = logging.getLogger("cifar_pipeline")
    library.setLevel(logging.INFO)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in library.handlers:
            library.addHandler(handler)


_route_library_logs()

__all__ = ["budget_task", "build_dataset_task", "doctor_task", "download_task", "evaluate_task", "extra_data_task",
           "figures_task", "promote_task", "report_task", "scan_extra_data_task", "train_task"]
