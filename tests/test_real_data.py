"""The smoke preset on the real CIFAR-10 archive (slow; skipped when the archive is absent)."""

import pytest

from cifar_pipeline.config import PipelineConfig
from tests.conftest import REAL_MD5, real_archive

pytestmark = [pytest.mark.slow, pytest.mark.real_data, pytest.mark.usefixtures("prefect_api")]


def test_smoke_preset_on_real_cifar10_beats_chance_clearly(tmp_path):
    from flows.pipeline import cifar_pipeline

    archive = real_archive()
    summary = cifar_pipeline(config=PipelineConfig(preset="smoke", source=[str(archive)], md5=REAL_MD5,
                                                   output_dir=str(tmp_path)))
    # Chance is 10%; one epoch on 10k images reaches about 49% (seed 0).
    assert summary.test_accuracy > 0.35
    assert summary.tasks["train"] == "Completed"
