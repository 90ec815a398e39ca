"""The time-budget planner with the measurement injected: rounding, caching, what it records."""

import pytest

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.errors import ConfigError
from cifar_pipeline.training.budget import BudgetPlan, measure_steps, plan_epochs, plan_training, planned_config
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.training.loop import training_key

MACHINE = "AMD EPYC 7B12 | AVX2 | bf16=False | 2 threads"

DATA = DatasetRecord(path="/nowhere", sha256="d" * 64, archive_md5="m" * 32, n_train=0, n_test=0, classes=[])


@pytest.mark.parametrize(("budget_min", "seconds_per_epoch", "expected"), [
    (15, 55, 16),     # 16.4 epochs fit: capped at the configured 16
    (15, 57, 14),     # 15.8 fit: down to a multiple of 2
    (15, 204, 4),     # AVX2, fp32: 4.4 fit
    (15, 500, 1),     # 1.8 fit: fewer than 2, one epoch
    (15, 900, 1),     # exactly one
])
def test_epochs_round_down_to_a_coarse_step_and_cap_at_the_configured(budget_min, seconds_per_epoch, expected):
    assert plan_epochs(budget_min, 16, seconds_per_epoch) == expected


def test_fractional_configured_epochs_are_kept_when_they_fit():
    assert plan_epochs(60, 9.9, 60) == 9.9
    assert plan_epochs(9, 9.9, 60) == 8


def test_less_than_one_epoch_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"time_budget_min 2 is too short: one epoch takes about 3.4 min"):
        plan_epochs(2, 16, 204)


def _cfg(**kw):
    """The cpu preset with one width unless a test gives budget_widths."""
    return PipelineConfig(preset="cpu", **{"budget_widths": [], **kw}).resolved({})


def test_measurement_is_cached_per_machine_and_config(tmp_path):
    calls = []

    def measure(cfg):
        calls.append(1)
        return 8.0, 25, 3  # 200 s per epoch

    first = plan_training(_cfg(), "md5", tmp_path, MACHINE, measure, train_images=50000)
    assert (first.planned_epochs, first.seconds_per_epoch, first.cached) == (4, 200, False)
    assert first.images_per_second == 250
    again = plan_training(_cfg(), "md5", tmp_path, MACHINE, measure, train_images=50000)
    assert again.cached and again.planned_epochs == 4 and len(calls) == 1
    # The budget and the epochs do not change a step's speed: still the same measurement.
    assert plan_training(_cfg(time_budget_min=30, epochs=12), "md5", tmp_path, MACHINE, measure,
                         train_images=50000).cached
    # Another machine, another width or other data: measured again.
    plan_training(_cfg(), "md5", tmp_path, MACHINE.replace("2 threads", "4 threads"), measure, train_images=50000)
    plan_training(_cfg(width=32), "md5", tmp_path, MACHINE, measure, train_images=50000)
    plan_training(_cfg(), "other", tmp_path, MACHINE, measure, train_images=50000)
    assert len(calls) == 4
    # Extra training images lengthen the epoch: the stored step time plans over the images there are now.
    grown = plan_training(_cfg(), "md5", tmp_path, MACHINE, measure, train_images=100000)
    assert grown.cached and (grown.seconds_per_epoch, grown.planned_epochs) == (400, 2)


def _by_width(seconds_per_epoch: dict[int, float], calls: list[int]):
    def measure(cfg):
        calls.append(cfg.width)
        return seconds_per_epoch[cfg.width] / 25, 25, 3
    return measure


def test_the_widest_width_keeping_half_the_epochs_trains(tmp_path):
    cfg = _cfg(epochs=16, budget_widths=[48, 64, 32])  # any order: widest first
    calls = []
    # AVX-512 BF16: the widest fits all 16 epochs and is the only one measured.
    fast = plan_training(cfg, "md5", tmp_path / "a", MACHINE, _by_width({64: 45, 48: 30, 32: 15}, calls),
                         train_images=50000)
    assert (fast.width, fast.planned_epochs, calls) == (64, 16, [64])
    assert "at width 64" in fast.summary() and fast.width_note() == ""
    # AVX2: 64 leaves 2 epochs, 48 leaves 4 (under half of 16), 32 leaves 8: width 32.
    calls.clear()
    slow = plan_training(cfg, "md5", tmp_path / "b", MACHINE, _by_width({64: 400, 48: 200, 32: 110}, calls),
                         train_images=50000)
    assert (slow.width, slow.planned_epochs, calls) == (32, 8, [64, 48, 32])
    assert [(o.width, o.epochs) for o in slow.options] == [(64, 2), (48, 4), (32, 8)]
    assert "Width 32 chosen from width 64: 400 s/epoch, 2 epochs" in slow.width_note()
    planned = planned_config(cfg, slow)
    assert (planned.width, planned.epochs) == (32, 8)
    assert training_key(planned, DATA) != training_key(planned_config(cfg, fast), DATA)
    # Rerun on the same machine: every measurement reused, the same choice.
    calls.clear()
    again = plan_training(cfg, "md5", tmp_path / "b", MACHINE, _by_width({64: 1, 48: 1, 32: 1}, calls),
                          train_images=50000)
    assert (again.width, again.planned_epochs, again.cached, calls) == (32, 8, True, [])


def test_no_width_keeps_half_the_epochs_then_the_one_training_most_does(tmp_path):
    cfg = _cfg(epochs=16, budget_widths=[64, 32])
    plan = plan_training(cfg, "md5", tmp_path, MACHINE, _by_width({64: 1200, 32: 300}, []), train_images=50000)
    assert (plan.width, plan.planned_epochs) == (32, 2)
    too_slow = _by_width({64: 4000, 32: 2000}, [])
    with pytest.raises(ConfigError, match="one epoch takes about 33.3 min"):
        plan_training(cfg, "md5", tmp_path / "x", MACHINE, too_slow, train_images=50000)


def test_a_width_asked_for_turns_the_width_choice_off():
    def cpu(**kw):
        return PipelineConfig(preset="cpu", **kw).resolved({})

    assert cpu().budget_widths == [64, 48, 32]
    assert cpu(width=48).budget_widths == [] and cpu(width=48).width == 48
    assert cpu(width=48, budget_widths="64,48").budget_widths == [64, 48]
    assert PipelineConfig(preset="seed").resolved({}).budget_widths == []


def test_planned_config_trains_the_planned_epochs_under_its_own_key():
    cfg = _cfg()
    plan = BudgetPlan(budget_min=15, configured_epochs=16, planned_epochs=4, seconds_per_epoch=200,
                      images_per_second=250, machine=MACHINE, cached=False, measured_at="now")
    planned = planned_config(cfg, plan)
    assert planned.epochs == 4 and planned.time_budget_min == 15
    assert training_key(planned, DATA) != training_key(cfg, DATA)
    assert planned_config(cfg, None) is cfg
    assert "trains 4 epochs" in plan.summary() and "200.0 s/epoch" in plan.summary()


def test_the_real_measurement_times_real_steps(tiny_dataset):
    record, _ = tiny_dataset
    cfg = _cfg(batch_size=32, width=8)
    seconds_per_step, steps_per_epoch, timed = measure_steps(cfg, record)
    assert seconds_per_step > 0 and steps_per_epoch == 200 // 32 and 1 <= timed <= steps_per_epoch


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_flow_plans_the_epochs_reports_them_and_reruns_from_cache(tmp_path, tiny_archive):
    import json
    from pathlib import Path

    from flows.pipeline import cifar_pipeline

    path, md5 = tiny_archive
    config = PipelineConfig(preset="smoke", train_subset=0, test_subset=0, batch_size=32, width=8, epochs=5,
                            time_budget_min=1000, source=[str(path)], md5=md5, output_dir=str(tmp_path))
    first = cifar_pipeline(config=config)
    assert first.tasks["plan-budget"] == "Completed" and first.tasks["train"] == "Completed"
    report = Path(first.report).read_text()
    assert "**Time budget:** 1000 min" in report and "ran 5 of the configured 5 epochs" in report
    assert "**CPU:**" in report

    # This machine, made slow: 25,000 s per epoch leave 2 epochs in 1000 minutes.
    (measurement,) = (tmp_path / "cache" / "budget").glob("*/record.json")
    envelope = json.loads(measurement.read_text())
    stored = envelope["record"]
    envelope["record"] = {**stored, "seconds_per_step": 25000 / stored["steps_per_epoch"]}
    measurement.write_text(json.dumps(envelope))
    slow = cifar_pipeline(config=config)
    assert slow.tasks["train"] == "Completed"
    report = Path(slow.report).read_text()
    assert "ran 2 of the configured 5 epochs" in report and "reused" in report
    assert "trained for 2 epochs" in report

    nightly = cifar_pipeline(config=config)
    assert nightly.tasks["train"] == "Cached" and nightly.tasks["evaluate"] == "Cached"
    assert nightly.test_accuracy == slow.test_accuracy
