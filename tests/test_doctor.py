"""The doctor on small generated data: each fault is found and told apart from the others."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import load_arrays
from cifar_pipeline.doctor.report import write_doctor_report
from cifar_pipeline.doctor.run import diagnose
from tests.doctor_faults import HEALTHY, freeze_head, learnable_archive, raw_pixels, shuffled
from tests.conftest import decode

# A budget far below what the probes need pins the plan to its floors (batch 32, 80/80/40 steps):
# the same plan on a busy machine as on an idle one.
TINY_BUDGET = 0.5


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    folder = tmp_path_factory.mktemp("doctor-data")
    path, md5 = learnable_archive(folder)
    return load_arrays(decode(path, md5, folder / "cache"))


def doctor(arrays, **kwargs):
    faults = {k: kwargs.pop(k) for k in ("normalization", "alter_model") if k in kwargs}
    cfg = PipelineConfig(**{**HEALTHY, **kwargs}).resolved()
    return diagnose(cfg, arrays, budget_s=TINY_BUDGET, **faults)


def results(result) -> dict[str, str]:
    return {c.name: c.result for c in result.checks}


@pytest.mark.slow
def test_healthy_configuration_passes_every_check_and_reports_figures(arrays, tmp_path):
    result = doctor(arrays)
    assert results(result) == {name: "pass" for name in ("data", "input_scale", "start", "learning_rate",
                                                          "one_batch", "gradients", "labels")}, result.checks
    assert result.status == "pass"
    low, high = result.lr_range
    assert low < 0.3 * 3 and high > 0.3 / 3  # the configured lr sits near the fastest fall
    assert result.plan.batch_size == 32 and result.plan.range_steps == 80

    report = write_doctor_report(result, tmp_path, PipelineConfig(**HEALTHY).resolved(), "Doctor")
    for name in ("doctor-lr-range.png", "doctor-gradients.png", "doctor-one-batch.png"):
        assert (tmp_path / name).stat().st_size > 5000
        assert f"]({name})" in report.markdown
    assert "3. the optimizer was given model.parameters()" in report.markdown
    assert report.checks["labels"]["result"] == "pass" and Path(report.path).is_file()


@pytest.mark.slow
def test_far_too_small_lr_is_named_with_the_range_to_use(arrays):
    result = doctor(arrays, lr=1e-4)
    lr_check = result.check("learning_rate")
    assert lr_check.result == "fail"
    low, high = result.lr_range
    assert low > 1e-3  # the range found is well above the configured lr
    assert "lr 0.0001 is far too small" in lr_check.message and f"[{low:.2g}, {high:.2g}]" in lr_check.message
    # Not mistaken for a wiring or a label problem: those probes ran at a good lr.
    assert result.check("one_batch").result in ("pass", "warn")
    assert result.check("labels").result == "pass"


@pytest.mark.slow
def test_far_too_large_lr_is_found_diverging_in_the_range_test(arrays):
    result = doctor(arrays, lr=50.0)
    lr_check = result.check("learning_rate")
    assert lr_check.result == "fail" and result.diverged_at is not None and result.diverged_at < 50
    assert "diverges" in lr_check.message and "Lower the learning rate" in lr_check.fix


@pytest.mark.slow
def test_unscaled_inputs_are_flagged(arrays):
    result = doctor(arrays, normalization=raw_pixels())
    scale = result.check("input_scale")
    assert scale.result == "fail" and "0-255" in scale.message and scale.blog_items == [4]
    assert scale.evidence["max"] > 200
    assert result.check("data").result == "pass"


@pytest.mark.slow
def test_frozen_last_layer_fails_one_batch_and_shows_no_gradient(arrays):
    result = doctor(arrays, alter_model=freeze_head)
    assert result.check("one_batch").result == "fail"
    assert "wiring is wrong" in result.check("one_batch").message
    grads = result.check("gradients")
    assert grads.result == "fail" and "output layer head" in grads.message
    head = next(layer for layer in grads.evidence["layers"] if layer["name"] == "head.weight")
    assert head["grad_norm"] == 0 and not head["trainable"]


@pytest.mark.slow
def test_shuffled_labels_are_a_data_problem_not_a_wiring_one(arrays):
    broken = dataclasses.replace(arrays, y_train=shuffled(arrays.y_train))
    result = doctor(broken)
    assert result.check("one_batch").result == "pass"  # one batch can still be memorised
    labels = result.check("labels")
    assert labels.result == "fail" and "data/label problem" in labels.message
    assert result.status == "fail"


def test_data_check_finds_test_images_copied_from_train_and_bad_labels(arrays):
    from cifar_pipeline.doctor.data import check_data

    x_test = arrays.x_test.copy()
    x_test[:30] = arrays.x_train[:30]
    leaked = check_data(arrays.x_train, arrays.y_train, x_test, arrays.y_test)
    assert leaked.result == "fail" and leaked.evidence["test_images_in_train"] == 30
    assert "30 test images (15.0%) are exact copies" in leaked.message

    y_train = arrays.y_train.copy()
    y_train[3] = 12
    bad = check_data(arrays.x_train, y_train, arrays.x_test, arrays.y_test)
    assert bad.result == "fail" and "labels outside 0..9" in bad.message
    assert check_data(arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test).result == "pass"


def test_lr_range_detection_on_a_synthetic_curve():
    import numpy as np

    from cifar_pipeline.doctor.probes import steepest_range

    lrs = np.geomspace(1e-5, 10, 120)
    loss = 2.3 - 1.5 / (1 + np.exp(-(np.log10(lrs) + 2) * 4))  # falls around lr 1e-2
    found = steepest_range(lrs, loss)
    assert found["fastest"][0] < 1e-2 < found["fastest"][1]
    assert steepest_range(lrs, np.full(120, 2.3))["fastest"] is None  # a flat curve has no range


def _has_colour(png: Path, rgb: tuple[float, float, float]) -> bool:
    import matplotlib.image
    import numpy as np

    pixels = matplotlib.image.imread(png)[..., :3]
    return bool((np.abs(pixels - np.asarray(rgb)).max(axis=-1) < 0.02).any())


def test_layer_norms_of_a_diverged_run_are_drawn_as_not_finite_not_as_no_gradient(tmp_path):
    import warnings

    from matplotlib.colors import to_rgb

    from cifar_pipeline.report.plots import plot_layer_gradients

    orange, red = to_rgb("C1"), to_rgb("C3")
    names = ["conv.weight", "head.weight", "head.bias"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN bar heights made matplotlib warn and drop the bars
        plot_layer_gradients(names, [1.0, float("nan"), 0.0], [2.0, float("inf"), 3.0], tmp_path / "nan.png")
        plot_layer_gradients(names, [1.0, 0.5, 0.0], [2.0, 1.0, 3.0], tmp_path / "finite.png")
    assert _has_colour(tmp_path / "nan.png", orange) and _has_colour(tmp_path / "nan.png", red)
    assert not _has_colour(tmp_path / "finite.png", orange) and _has_colour(tmp_path / "finite.png", red)
