"""A rerun that every cache serves stays light: no torch, and the model's figures are not redrawn.

The rerun is its own process (torch is already loaded in pytest's), against the test session's
Prefect API, so what it imports is what a user's `cifar-pipeline run` imports.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifar_pipeline.config import PipelineConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

ROOT = Path(__file__).resolve().parents[1]
RERUN = """
import json, sys
from cifar_pipeline.config import PipelineConfig
from flows.pipeline import cifar_pipeline
summary = cifar_pipeline(config=PipelineConfig.model_validate_json(sys.argv[1]))
loaded = [m for m in ("torch", "torchvision", "onnx", "onnxruntime") if m in sys.modules]
print(json.dumps({"tasks": summary.tasks, "loaded": loaded, "run_dir": summary.run_dir}))
"""


def test_a_cached_rerun_imports_no_torch_and_copies_the_figures(tmp_path, tiny_archive):
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import cifar_pipeline

    path, md5 = tiny_archive
    config = PipelineConfig(preset="smoke", train_subset=0, test_subset=0, batch_size=32, width=8, epochs=1,
                            source=[str(path)], md5=md5, output_dir=str(tmp_path))
    first = cifar_pipeline(config=config)

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", RERUN, config.model_dump_json(exclude_none=True)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rerun = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {k: v for k, v in rerun["tasks"].items() if k not in ("promote", "report")} == {
        "download": "Cached", "build-dataset": "Cached", "train": "Cached", "evaluate": "Cached", "figures": "Cached"}
    assert rerun["loaded"] == []
    for name in ("curves.png", "confusion.png", "samples.png"):
        assert (Path(rerun["run_dir"]) / name).read_bytes() == (Path(first.run_dir) / name).read_bytes()
