"""The retention task of the weekly maintenance deployment: `cifar-pipeline gc`, as a task."""

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cifar_pipeline.retention import Policy, collect


# Never cached: it decides from what is on disk now.
@task(name="gc", cache_policy=NO_CACHE, persist_result=False)
def gc_task(output_dir: str, policy: Policy, dry_run: bool = False) -> dict:
    return collect(output_dir, policy, dry_run=dry_run, log=get_run_logger().info)
