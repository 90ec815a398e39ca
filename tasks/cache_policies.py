"""Cache keys: each names exactly what determines a task's result.

Prefect's TASK_SOURCE would only see the task function's own text, so training and evaluation
keys include a digest of the library code they run (cifar_pipeline.provenance.code_version).
"""

from __future__ import annotations

import hashlib
from typing import Any

from cifar_pipeline.data.extra import extra_data_key as _extra_key
from cifar_pipeline.data.extra import training_digest
from cifar_pipeline.evaluation import evaluation_key
from cifar_pipeline.provenance import code_version
from cifar_pipeline.training.loop import training_key


def download_key(_ctx: Any, params: dict[str, Any]) -> str:
    sources = hashlib.sha256("\n".join(params["sources"]).encode()).hexdigest()[:12]
    return f"download-{params['md5']}-{sources}"


def dataset_key(_ctx: Any, params: dict[str, Any]) -> str:
    return f"dataset-{params['archive'].md5}-{code_version('data')}"


def extra_data_key(_ctx: Any, params: dict[str, Any]) -> str:
    return "extra-" + _extra_key(params["manifest"], params["policy"], params["max_pixels"])


def train_key(_ctx: Any, params: dict[str, Any]) -> str:
    digest = training_digest(params.get("extra"))
    return "train-" + training_key(params["config"], params["dataset"].archive_md5, digest)


def evaluate_key(_ctx: Any, params: dict[str, Any]) -> str:
    return "evaluate-" + evaluation_key(params["config"], params["trained"], params["dataset"].archive_md5)
