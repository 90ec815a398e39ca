"""The cache policy of every cached task: the library stage's own key, nothing else.

`stage_task(STAGE, inputs)` makes a task whose `cache_key_fn` is `STAGE.key(inputs(...))` over the
task's parameters, the same key under which the library keeps the stage's entry on disk, so the
two caches cannot disagree. It also records the task as a stage: the flow asks `still_holds` whether
a cached Prefect result still stands (its entry and files are there) and `is_stage` which tasks
did expensive work, here rather than in lists of its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from prefect import task

from cifar_pipeline.stage import Stage

STAGES: dict[str, tuple[Stage, Callable[..., dict]]] = {}


def _inputs(inputs: Callable[..., dict], params: dict[str, Any]) -> dict:
    names = inspect.signature(inputs).parameters
    return inputs(**{name: params[name] for name in names if name in params})


def stage_key_fn(stage: Stage, inputs: Callable[..., dict]) -> Callable[[Any, dict[str, Any]], str]:
    def cache_key(_ctx: Any, params: dict[str, Any]) -> str:
        return f"{stage.name}-{stage.key(_inputs(inputs, params))}"

    return cache_key


def stage_task(stage: Stage, inputs: Callable[..., dict], **options: Any):
    """@task for a stage: named after it, keyed by it, its result stored as JSON."""

    def wrap(fn):
        STAGES[stage.name] = (stage, inputs)
        return task(name=stage.name, cache_key_fn=stage_key_fn(stage, inputs), result_serializer="json",
                    **options)(fn)

    return wrap


def is_stage(task_name: str) -> bool:
    return task_name in STAGES


def entry_of(task_name: str, params: dict[str, Any]) -> str:
    """The stage entry a task's result lives in, relative to the cache folder: `<folder>/<key>`."""
    stage, inputs = STAGES[task_name]
    return f"{stage.folder}/{stage.key(_inputs(inputs, params))}"


def still_holds(task_name: str, params: dict[str, Any], result: Any) -> bool:
    """False when a cached result cannot serve: its entry was removed (a cleaned cache, retention), a
    file it names is gone, or an older version of the code wrote it (Prefect's decoder, finding no
    class at the stored path, hands back a plain dict)."""
    stage, inputs = STAGES[task_name]
    return stage.holds(params["cache_dir"], _inputs(inputs, params), result)
