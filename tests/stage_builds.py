"""Build one cached stage of the library on the tiny archive, optionally stopping for good mid-build.

    python -m tests.stage_builds STAGE CACHE ARCHIVE MD5 MARKER

runs every stage upstream of STAGE, then STAGE with a block at the point named in BLOCKS: it writes
MARKER and sleeps, so that the test can SIGKILL the process while the build's temp files or scratch
folder exist. The test then calls `build(STAGE, ...)` in its own process to finish the work.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

TINY = dict(preset="smoke", train_subset=0, test_subset=0, batch_size=32, width=8, epochs=1, time_budget_min=0)
STAGES = ("download", "build-dataset", "extra-data", "measure-speed", "train", "evaluate", "figures", "diagnose")
# Where a build is stopped: "replace" blocks os.replace (an atomic write's temp file is on disk),
# "decode" blocks reading the extracted batches (the scratch folder holds the extracted archive).
BLOCKS = {"build-dataset": "decode"}


def config():
    from cifar_pipeline.config import PipelineConfig

    return PipelineConfig(**TINY).resolved({})


def extra_folder(dataset, root: Path) -> Path:
    from PIL import Image

    from cifar_pipeline.data.dataset import load_arrays

    arrays = load_arrays(dataset)
    for i in range(12):
        path = root / arrays.classes[arrays.y_train[i]] / f"img_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            Image.fromarray(arrays.x_train[i]).save(path)
    return root


def build(stage: str, cache: Path, archive: str, md5: str, block=None):
    """Run `stage` (and what it needs); `block()` is called once everything upstream is built."""
    from cifar_pipeline.data.dataset import build_dataset
    from cifar_pipeline.data.download import fetch_archive

    block = block or (lambda: None)
    if stage == "download":
        block()
        return fetch_archive([archive], md5, cache)
    dataset = build_dataset(fetch_archive([archive], md5, cache), cache) if stage != "build-dataset" else None
    cfg = config()
    if stage == "build-dataset":
        record = fetch_archive([archive], md5, cache)
        block()
        return build_dataset(record, cache)
    if stage == "extra-data":
        from cifar_pipeline.data.extra import build_extra_data, scan_folders

        manifest = scan_folders([str(extra_folder(dataset, cache.parent / "extra"))], dataset.classes)
        block()
        return build_extra_data(manifest, cache)
    if stage == "measure-speed":
        from cifar_pipeline.training.budget import measure_steps, plan_training

        block()
        return plan_training(cfg.model_copy(update={"time_budget_min": 1.0}), dataset.content_digest(), cache,
                             "test machine", lambda planned, limit: measure_steps(planned, dataset, None, limit), train_images=200)
    if stage == "diagnose":
        from cifar_pipeline.doctor.report import doctor_dataset

        block()
        return doctor_dataset(cfg, dataset, cache.parent / "diagnosis", "diagnosis", quick=True, cache_dir=cache)
    from cifar_pipeline.training.loop import train

    if stage == "train":
        block()
        return train(cfg, dataset, cache, progress=False)
    from cifar_pipeline.evaluation import evaluate

    trained = train(cfg, dataset, cache, progress=False)
    if stage == "evaluate":
        block()
        return evaluate(cfg, trained, dataset, cache)
    from cifar_pipeline.report.figures import figures

    evaluated = evaluate(cfg, trained, dataset, cache)
    block()
    return figures(cfg, trained, evaluated, dataset, cache)


def _blocker(kind: str, marker: Path):
    def stop() -> None:
        marker.write_text("blocked")
        time.sleep(600)

    def install() -> None:
        if kind == "decode":
            import cifar_pipeline.data.dataset as dataset

            dataset.read_batches = lambda root: stop()
        else:
            real = os.replace

            def replace(src, dst, *args, **kwargs):
                if Path(str(src)).name.endswith(".tmp"):  # an atomic write, about to land
                    stop()
                return real(src, dst, *args, **kwargs)

            os.replace = replace

    return install


if __name__ == "__main__":
    name, cache, archive, md5, marker = sys.argv[1:6]
    os.environ.setdefault("CIFAR_PIPELINE_DOCTOR_BUDGET_S", "2")
    build(name, Path(cache), archive, md5, block=_blocker(BLOCKS.get(name, "replace"), Path(marker)))
    sys.exit("the build was meant to be killed before it finished")
