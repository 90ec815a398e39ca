"""The `cifar-maintenance` flow: retention of the output folder, weekly (deployments/prefect.yaml).

The same policy as `cifar-pipeline gc` (cifar_pipeline/retention.py): old runs, cache entries,
Prefect result records and models go; the champion, its predecessors and whatever kept or running
runs need stay.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from cifar_pipeline.access import check_places
from cifar_pipeline.errors import ConfigError
from cifar_pipeline.layout import output_root
from cifar_pipeline.retention import Policy
from tasks.maintenance import gc_task


@flow(name="cifar-maintenance", log_prints=True)
def maintenance(
    output_dir: str = "outputs",
    keep_runs: Annotated[int, Field(ge=1)] = 10,
    keep_days: Annotated[float, Field(ge=0)] = 7.0,
    keep_champions: Annotated[int, Field(ge=0)] = 5,
    keep_latest_per_deployment: bool = True,
    dry_run: bool = False,
) -> dict:
    """Remove what the retention policy no longer keeps from the pipeline's output folder.

    keep_runs: the N latest completed runs stay; keep_days: so does every run newer than D days;
    keep_champions: the champion and its K predecessors stay in the registry. dry_run: list only.
    """
    # Anyone with the UI sets the folder: the worker's allowed folders apply before anything is read.
    check_places([("output_dir", output_dir)])
    if not output_root(output_dir).is_dir():
        raise ConfigError(f"output_dir = {output_dir!r} is not a folder (on the worker, relative paths start at "
                          "the deployment's working directory)")
    policy = Policy(keep_runs=keep_runs, keep_days=keep_days, keep_champions=keep_champions,
                    keep_latest_per_deployment=keep_latest_per_deployment)
    result = gc_task(output_dir=output_dir, policy=policy, dry_run=dry_run)
    verb = "would free" if dry_run else "freed"
    get_run_logger().info("%s %.1f MB in %d path(s); kept %s", verb, result["freed_bytes"] / 1e6,
                          len(result["removed"]), result["kept"])
    create_markdown_artifact(
        f"Retention of `{output_root(output_dir)}`: {verb} **{result['freed_bytes'] / 1e6:.1f} MB** in "
        f"{len(result['removed'])} path(s); kept {result['kept']}; {len(result['skipped'])} skipped (in use).",
        key="cifar-maintenance", description="Retention of the output folder")
    return result
