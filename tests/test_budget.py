"""The time-budget planner with the measurement injected: rounding, caching, the width and epochs chosen."""

import math
import os

import pytest

from cifar_pipeline.config import PipelineConfig, validate_config
from cifar_pipeline.errors import ConfigError
from cifar_pipeline.training.budget import (BudgetPlan, Measurement, Speed, measure_steps, plan_epochs, plan_training,
                                            planned_config, recipe_changes, training_seconds)
from cifar_pipeline.training.frontier import best_epochs, best_possible, by_recipe, fewest_epochs, predict
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.training.records import training_key

MACHINE = "AMD EPYC 7B12 | AVX2 | bf16=False | 2 threads"

DATA = DatasetRecord(path="/nowhere", sha256="d" * 64, archive_md5="m" * 32, n_train=0, n_test=0, classes=[])


def per_epoch(seconds: float):
    return lambda epochs: seconds * epochs


@pytest.mark.parametrize(("budget_min", "seconds_per_epoch", "expected"), [
    (15, 53, 16),     # 16 epochs take 848 s, within 95 % of 900 s: the cap
    (15, 53.5, 15.5),  # 16 would take 856 s, past 855: down to a half epoch (26.8 s, under 3 % of the budget)
    (30, 107, 15.5),  # half an epoch is 53.5 s, under 3 % of 1800 s: 15.98 fit, planned in halves
    (15, 56, 15.2),   # half an epoch is 28 s, over 3 % of 900 s: tenths (15.27 fit)
    (15, 162.3, 5.2),  # AVX2 EPYC (Zen 1), width 32: 5.27 fit, where halves would plan 5 (90 % of 855 s)
    (15, 500, 1.7),   # 1.71 fit
    (15, 855, 1),     # exactly one
])
def test_epochs_fill_the_budget_in_steps_of_at_most_3_percent_up_to_the_cap(budget_min, seconds_per_epoch,
                                                                              expected):
    assert plan_epochs(budget_min, 16, per_epoch(seconds_per_epoch)) == expected


def test_fractional_caps_are_kept_when_they_fit():
    assert plan_epochs(60, 9.9, per_epoch(60)) == 9.9
    assert plan_epochs(9, 9.9, per_epoch(60)) == 8.5


def test_less_than_one_epoch_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"time_budget_min 2 is too short: one epoch takes about 3.4 min"):
        plan_epochs(2, 16, per_epoch(204))


def test_the_early_epochs_are_planned_at_their_own_speed():
    # 25 steps per epoch, 2.2 s per step while the whitening bias trains (3 epochs), 2.0 s after.
    measured = Measurement(machine=MACHINE, seconds_per_step=2.0, seconds_per_step_early=2.2, early_epochs=3,
                           steps_per_epoch=25, timed_steps=8, measured_at="now")
    assert training_seconds(measured, 2, 25) == pytest.approx(50 * 2.2)
    assert training_seconds(measured, 16, 25) == pytest.approx(75 * 2.2 + 325 * 2.0)
    assert training_seconds(measured, 16.5, 25) == pytest.approx(75 * 2.2 + 338 * 2.0)  # ceil of 412.5 steps
    # Planned in halves with a single speed (the early one), the run would get 15.5 epochs; at its two, 16.5.
    assert plan_epochs(15, 64, lambda e: training_seconds(measured, e, 25), step=0.5) == 16.5
    assert plan_epochs(15, 64, lambda e: training_seconds(measured.model_copy(update={"seconds_per_step": 2.2}),
                                                          e, 25), step=0.5) == 15.5


def _cfg(**kw):
    """The cpu preset with one width, no frontier and no growth past its epochs unless a test gives them."""
    return PipelineConfig(preset="cpu", **{"budget_widths": [], "budget_frontier": [], "max_epochs": 0, **kw}
                          ).resolved({})


def test_measurement_is_cached_per_machine_and_config(tmp_path):
    calls = []

    def measure(cfg, give_up_above):
        calls.append(1)
        return Speed(8.0, 8.0, 25, 3)  # 200 s per epoch

    first = plan_training(_cfg(), "md5", tmp_path, MACHINE, measure, train_images=50000)
    assert (first.planned_epochs, first.seconds_per_epoch, first.cached) == (4.2, 200, False)  # tenths: 4.28 fit
    assert first.images_per_second == 250 and first.predicted_seconds == 105 * 8.0
    again = plan_training(_cfg(), "md5", tmp_path, MACHINE, measure, train_images=50000)
    assert again.cached and again.planned_epochs == 4.2 and len(calls) == 1
    # The budget and the epochs do not change a step's speed: still the same measurement.
    assert plan_training(_cfg(time_budget_min=30, epochs=12, max_epochs=40), "md5", tmp_path, MACHINE, measure,
                         train_images=50000).cached
    # Another machine, another width or other data: measured again.
    plan_training(_cfg(), "md5", tmp_path, MACHINE.replace("2 threads", "4 threads"), measure, train_images=50000)
    plan_training(_cfg(width=32), "md5", tmp_path, MACHINE, measure, train_images=50000)
    plan_training(_cfg(), "other", tmp_path, MACHINE, measure, train_images=50000)
    assert len(calls) == 4
    # The seed changes no step's work: another seed reuses the measurement.
    assert plan_training(_cfg(seed=7), "md5", tmp_path, MACHINE, measure, train_images=50000).cached
    assert len(calls) == 4
    # Extra training images lengthen the epoch: the stored step time plans over the images there are now.
    grown = plan_training(_cfg(), "md5", tmp_path, MACHINE, measure, train_images=100000)
    assert grown.cached and (grown.seconds_per_epoch, grown.planned_epochs) == (400, 2.1)


def test_a_larger_budget_grows_the_run_up_to_max_epochs(tmp_path):
    def measure(cfg, give_up_above):
        return Speed(2.0, 2.0, 25, 3)  # 50 s per epoch

    shrink_only = plan_training(_cfg(time_budget_min=60, max_epochs=0), "md5", tmp_path, MACHINE, measure,
                                train_images=50000)
    assert shrink_only.planned_epochs == 16 and "the configured epochs" in shrink_only.summary()
    grown = plan_training(_cfg(time_budget_min=30, max_epochs=48), "md5", tmp_path, MACHINE, measure,
                          train_images=50000)
    assert grown.planned_epochs == 34 and "grown from the configured 16, at most 48" in grown.summary()
    capped = plan_training(_cfg(time_budget_min=60, max_epochs=48), "md5", tmp_path, MACHINE, measure,
                           train_images=50000)
    assert capped.planned_epochs == 48
    assert planned_config(_cfg(), grown).epochs == 34


def _by_width(seconds_per_epoch: dict[int, float], calls: list[int]):
    """A measurement of 25-step epochs taking these seconds, that gives up as measure_steps does."""
    def measure(cfg, give_up_above):
        calls.append(cfg.width)
        step = seconds_per_epoch[cfg.width] / 25
        if give_up_above is not None and step > give_up_above:
            return Speed(step, step, 25, 1, complete=False)
        return Speed(step, step, 25, 3)
    return measure


def test_without_a_frontier_the_widest_width_keeping_half_the_epochs_trains(tmp_path):
    cfg = _cfg(epochs=16, budget_widths=[48, 64, 32])  # any order: widest first
    calls = []
    # AVX-512 BF16: the widest fits all 16 epochs and is the only one measured.
    fast = plan_training(cfg, "md5", tmp_path / "a", MACHINE, _by_width({64: 45, 48: 30, 32: 15}, calls),
                         train_images=50000)
    assert (fast.width, fast.planned_epochs, calls) == (64, 16, [64])
    assert "at width 64" in fast.summary() and fast.width_note() == ""
    # AVX2: 64 at 16 s per step would need steps of 4.3 s for half of 16 epochs: more than twice as slow, it
    # is given up after one timed step; 48 leaves 4.2 epochs (under half of 16), 32 leaves 8.5: width 32.
    # Their epochs are long (half of one is over 3 % of the budget), so planned in tenths.
    calls.clear()
    slow = plan_training(cfg, "md5", tmp_path / "b", MACHINE, _by_width({64: 400, 48: 200, 32: 100}, calls),
                         train_images=50000)
    assert (slow.width, slow.planned_epochs, calls) == (32, 8.5, [64, 48, 32])
    assert [(o.width, o.epochs, o.probed) for o in slow.options] == [(64, 0, True), (48, 4.2, False),
                                                                     (32, 8.5, False)]
    assert ("Width 32 chosen from width 64: about 400 s/epoch by its first timed step, far too slow to be chosen "
            "(not measured further), width 48: 200 s/epoch, 4.2 epochs") in slow.width_note()
    assert "the widest keeping at least 50%" in slow.width_note()
    planned = planned_config(cfg, slow)
    assert (planned.width, planned.epochs) == (32, 8.5)
    assert training_key(planned, DATA) != training_key(planned_config(cfg, fast), DATA)
    # Rerun on the same machine: every measurement reused, the same choice.
    calls.clear()
    again = plan_training(cfg, "md5", tmp_path / "b", MACHINE, _by_width({64: 1, 48: 1, 32: 1}, calls),
                          train_images=50000)
    assert (again.width, again.planned_epochs, again.cached, calls) == (32, 8.5, True, [])


def test_no_width_keeps_half_the_epochs_then_the_one_training_most_does(tmp_path):
    cfg = _cfg(epochs=16, budget_widths=[64, 32])
    plan = plan_training(cfg, "md5", tmp_path, MACHINE, _by_width({64: 1200, 32: 300}, []), train_images=50000)
    assert (plan.width, plan.planned_epochs) == (32, 2.8)
    assert "width 64: about 1200 s/epoch by its first timed step, far too slow" in plan.width_note()
    assert "none keeps 50% of the configured epochs: the one training the most" in plan.width_note()
    # With a frontier that covers neither width at the epochs that fit, the same rule, and the plan says
    # its measurements were taken now (then reused by the next run).
    covered_longer = cfg.model_copy(update={"budget_frontier": [(64, 16, 91.5), (32, 14, 89.4)]})
    first = plan_training(covered_longer, "md5", tmp_path / "f", MACHINE, _by_width({64: 1200, 32: 300}, []),
                          train_images=50000)
    assert (first.width, first.planned_epochs, first.predicted_accuracy, first.cached) == (32, 2.8, None, False)
    again = plan_training(covered_longer, "md5", tmp_path / "f", MACHINE, _by_width({64: 1, 32: 1}, []),
                          train_images=50000)
    assert (again.width, again.planned_epochs, again.cached) == (32, 2.8, True)
    too_slow = _by_width({64: 4000, 32: 2000}, [])
    with pytest.raises(ConfigError, match="one epoch takes about 33.3 min"):
        plan_training(cfg, "md5", tmp_path / "x", MACHINE, too_slow, train_images=50000)


FRONTIER = [(128, 12, 92.4), (96, 10, 91.6), (96, 20, 92.5), (64, 4, 88.4), (64, 16, 91.5), (64, 32, 92.0),
            (32, 8, 88.2), (32, 14, 89.4)]


def test_the_frontier_picks_the_point_predicted_most_accurate_for_the_time(tmp_path):
    cfg = _cfg(epochs=16, max_epochs=48, budget_widths=[128, 96, 64, 32], budget_frontier=FRONTIER)
    speeds = {128: 200, 96: 110, 64: 50, 32: 20}
    calls = []
    # 15 min: 128 fits 4.2 epochs (not covered), 96 fits 7.7 (not covered), 64 fits 17 (91.6 %); 32 could reach
    # at most 89.4 %: never measured.
    short = plan_training(cfg, "md5", tmp_path, MACHINE, _by_width(speeds, calls), train_images=50000)
    assert (short.width, short.planned_epochs) == (64, 17)
    assert short.predicted_accuracy == pytest.approx(91.5 + (92.0 - 91.5) * math.log(17 / 16) / math.log(2))
    assert sorted(calls) == [64, 96, 128]
    assert "the most accurate for the time by the measured frontier" in short.width_note()
    assert "width 96: 110 s/epoch, 7.7 epochs" in short.width_note()
    # 60 min: 96 fits 31 epochs (92.5 %, flat past its 20); 128 could reach at most 92.4 %: not measured.
    calls.clear()
    long = plan_training(cfg.model_copy(update={"time_budget_min": 60.0}), "md5", tmp_path, MACHINE,
                         _by_width(speeds, calls), train_images=50000)
    assert (long.width, long.planned_epochs, long.predicted_accuracy) == (96, 31, 92.5)
    assert calls == []  # every width measured before: reused
    # An AVX2 machine, 4x slower: 64 fits 4.2 epochs (88.51 %), 32 fits 10.6 (88.80 %): the narrower, longer run.
    calls.clear()
    slow = plan_training(cfg, "md5", tmp_path / "avx2", MACHINE, _by_width({w: 4 * s for w, s in speeds.items()},
                                                                             calls), train_images=50000)
    assert (slow.width, slow.planned_epochs, calls) == (32, 10.6, [96, 128, 64, 32])
    assert slow.predicted_accuracy == pytest.approx(88.2 + 1.2 * math.log(10.6 / 8) / math.log(14 / 8))


def test_widths_that_cannot_beat_the_best_so_far_are_not_measured(tmp_path):
    cfg = _cfg(epochs=16, max_epochs=48, budget_widths=[128, 96, 64, 32], budget_frontier=FRONTIER)
    calls = []
    # A fast machine, 60 min: 96 fits the 48 epochs of the cap (92.5 %); 128 could reach at most 92.4 %,
    # 64 92.0 % and 32 89.4 %: none of them is measured.
    plan = plan_training(cfg.model_copy(update={"time_budget_min": 60.0}), "md5", tmp_path, MACHINE,
                         _by_width({128: 75, 96: 40, 64: 20, 32: 10}, calls), train_images=50000)
    assert calls == [96] and (plan.width, plan.planned_epochs) == (96, 48)


def test_a_frontier_covering_no_width_falls_back_to_the_widest_rule(tmp_path):
    cfg = _cfg(epochs=16, budget_widths=[64, 32], budget_frontier=[(128, 12, 92.4)])
    plan = plan_training(cfg, "md5", tmp_path, MACHINE, _by_width({64: 45, 32: 15}, []), train_images=50000)
    assert (plan.width, plan.planned_epochs, plan.predicted_accuracy) == (64, 16, None)


def test_frontier_prediction_interpolates_in_log_epochs_and_never_extrapolates():
    points = [(64, 8, 90.0), (64, 16, 91.0), (64, 16, 91.2), (64, 32, 92.0)]
    assert predict(points, 64, 16) == pytest.approx(91.1)  # seeds averaged
    assert predict(points, 64, 8 * 2 ** 0.5) == pytest.approx(90.55)
    assert predict(points, 64, 64) == pytest.approx(92.0)  # flat past the longest run
    assert predict(points, 64, 6) is None and predict(points, 96, 16) is None
    assert best_possible(points, 64, 20) == pytest.approx(predict(points, 64, 20))
    assert best_possible(points, 64, 4) is None
    # The fewest epochs with which a width could be chosen: covered at all, or more accurate than a rival.
    assert fewest_epochs(points, 64, 40) == 8 and fewest_epochs(points, 64, 40, beating=89.0) == 8
    assert fewest_epochs(points, 64, 40, beating=90.55) == pytest.approx(8 * 2 ** 0.5)
    assert fewest_epochs(points, 64, 40, beating=92.0) is None and fewest_epochs(points, 64, 6) is None


def test_fewer_epochs_train_where_the_frontier_measured_them_more_accurate(tmp_path):
    points = [(64, 16, 91.5), (64, 20, 91.8), (64, 27, 91.4)]  # past 20 epochs the width overfits
    assert best_epochs(points, 64, 18) == 18  # still rising: all that fit
    assert best_epochs(points, 64, 24) == 20 and best_epochs(points, 64, 40) == 20
    assert best_epochs(points, 64, 12) is None  # below the shortest measured run
    assert best_epochs([(64, 16, 91.5), (64, 20, 91.5)], 64, 24) == 24  # ties: the longer run
    # 24 epochs are predicted 0.24 points below 20: within seed noise, so all 24 train; 40, 0.4 below: 20.
    assert best_epochs(points, 64, 24, margin=0.25) == 24 and best_epochs(points, 64, 40, margin=0.25) == 20
    assert best_possible(points, 64, 40) == pytest.approx(91.8)
    cfg = _cfg(epochs=16, max_epochs=32, time_budget_min=30.0, budget_widths=[64], budget_frontier=points)
    # 30 min at 50 s per epoch: the cap of 32 epochs fits, 20 are predicted best.
    plan = plan_training(cfg, "md5", tmp_path, MACHINE, _by_width({64: 50}, []), train_images=50000)
    assert (plan.width, plan.planned_epochs, plan.fitting_epochs) == (64, 20, 32)
    assert plan.predicted_accuracy == pytest.approx(91.8) and plan.predicted_seconds == pytest.approx(20 * 50)
    assert "trains 20 epochs at width 64 (fewer than the 32 that fit" in plan.summary()
    assert planned_config(cfg, plan).epochs == 20
    # 15 min: 17 fit, below the best measured length: all of them train.
    short = plan_training(cfg.model_copy(update={"time_budget_min": 15.0}), "md5", tmp_path, MACHINE,
                          _by_width({64: 50}, []), train_images=50000)
    assert (short.planned_epochs, short.fitting_epochs) == (17, 17) and "fewer" not in short.summary()


def test_a_recipe_change_measured_to_pay_on_long_runs_is_made_only_where_they_fit(tmp_path):
    # Cutout measured below the plain recipe at 16 epochs and above it at 27, where the plain one overfits.
    points = [(64, 16, 91.5), (64, 20, 91.8), (64, 27, 91.4), (64, 16, 91.3, {"cutout": 8}),
              (64, 27, 92.0, {"cutout": 8})]
    cfg = _cfg(epochs=16, max_epochs=32, budget_widths=[64], budget_frontier=points)
    calls = []

    def measure(config, give_up_above):
        calls.append((config.width, config.cutout))
        return Speed(50 / 25, 50 / 25, 25, 3)

    # 15 min at 50 s per epoch: 17 fit; cutout could reach 92.0 % so it is planned first, but at 17 epochs
    # it is read at 91.38 % against the plain recipe's 91.58 %. Cutout does not change a step's work: the
    # plain recipe reuses cutout's measurement.
    short = plan_training(cfg, "md5", tmp_path, MACHINE, measure, train_images=50000)
    assert (short.width, short.planned_epochs, short.recipe, calls) == (64, 17, {}, [(64, 8)])
    assert short.predicted_accuracy == pytest.approx(91.5 + 0.3 * math.log(17 / 16) / math.log(20 / 16))
    assert "width 64 with cutout=8: 50 s/epoch, 17 epochs (predicted 91.38 %)" in short.width_note()
    # 30 min: the cap of 32 fits; cutout is read at its 27 epochs' 92.0 %, beyond anything the plain recipe
    # measured, which is therefore not considered.
    calls.clear()
    long = plan_training(cfg.model_copy(update={"time_budget_min": 30.0}), "md5", tmp_path, MACHINE, measure,
                         train_images=50000)
    assert (long.width, long.planned_epochs, long.recipe, long.predicted_accuracy) == (64, 32, {"cutout": 8}, 92.0)
    assert calls == []  # measured before: reused
    assert "trains 32 epochs at width 64 with cutout=8 (" in long.summary()
    trained = planned_config(cfg, long)
    assert (trained.cutout, trained.epochs) == (8, 32)
    assert training_key(trained, DATA) != training_key(planned_config(cfg, short), DATA)


def test_the_frontier_is_given_as_width_x_epochs_equals_accuracy():
    cfg = PipelineConfig(preset="cpu", budget_frontier="64x16=91.5, 96x12=92 64x27[cutout=8; tta=1]=92.1").resolved({})
    assert cfg.budget_frontier == [(64, 16.0, 91.5), (96, 12.0, 92.0), (64, 27.0, 92.1, {"cutout": 8, "tta": 1})]
    assert validate_config({"preset": "cpu", "budget_frontier": [[64, 27, 92.1, {}]]}).budget_frontier == [
        (64, 27.0, 92.1)]  # no change: the recipe itself
    for bad, message in [("64-16", "is not WIDTHxEPOCHS=ACCURACY"), ("64x27[seed=1]=92", "cannot set 'seed'"),
                         ("64x27[cutout=big]=92", "cutout='big'"), ("64x27[cutout]=92", "FIELD=VALUE")]:
        with pytest.raises(ConfigError, match=message):
            validate_config({"preset": "cpu", "budget_frontier": [bad]})


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
    speed = measure_steps(cfg, record)
    assert speed.seconds_per_step > 0 and speed.seconds_per_step_early > 0 and speed.steps_per_epoch == 200 // 32
    # Both phases timed, each past its warm-up; a 6-step epoch runs on into the next.
    assert speed.timed_steps >= 6
    assert 1 <= speed.threads <= (os.cpu_count() or 1)  # recorded: the plan's time holds for this many
    assert speed.complete
    # A width out of reach: given up after its first timed step.
    probe = measure_steps(cfg, record, give_up_above=1e-9)
    assert (probe.complete, probe.timed_steps) == (False, 1) and probe.seconds_per_step > 1e-9


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
    assert "**Time budget:** 1000 min" in report and "ran 5 epochs (the configured epochs)" in report
    assert "**CPU:**" in report

    # This machine, made slow: 25,000 s per epoch leave 2.1 epochs in 1000 minutes (2.2 epochs are 14 whole
    # steps of 6, 97 % of the budget).
    (measurement,) = (tmp_path / "cache" / "budget").glob("*/record.json")
    envelope = json.loads(measurement.read_text())
    stored = envelope["record"]
    slow_step = 25000 / stored["steps_per_epoch"]
    envelope["record"] = {**stored, "seconds_per_step": slow_step, "seconds_per_step_early": slow_step}
    measurement.write_text(json.dumps(envelope))
    slow = cifar_pipeline(config=config)
    assert slow.tasks["train"] == "Completed"
    report = Path(slow.report).read_text()
    assert "ran 2.1 epochs (of the configured 5)" in report and "reused" in report
    assert "trained for 2.1 epochs" in report

    nightly = cifar_pipeline(config=config)
    assert nightly.tasks["train"] == "Cached" and nightly.tasks["evaluate"] == "Cached"
    assert nightly.test_accuracy == slow.test_accuracy

    # The machine, measured very fast, then slower than that in training: the run planned 4 epochs in a budget
    # of 0.6 ms, fell behind in its first epoch, and was shortened to end one step after it.
    fast_step = 1e-9
    envelope["record"] = {**stored, "seconds_per_step": fast_step, "seconds_per_step_early": fast_step}
    measurement.write_text(json.dumps(envelope))
    behind = cifar_pipeline(config=config.model_copy(update={"epochs": 4.0, "time_budget_min": 1e-5}))
    report = Path(behind.report).read_text()
    assert "ran 4 epochs (the configured epochs)" in report
    assert "It fell behind its plan and was shortened to 1.17 epochs" in report
    assert "**Warning:** After epoch 1, the machine ran" in report


@pytest.mark.parametrize(("speeds", "expected"), [
    # The budget warm-up's seconds per epoch measured on the Intel AVX-512 BF16 machine (RESULTS.md):
    # width 64 grows past its 16 epochs to use the 15 minutes: 21 fit, predicted 0.06 points below 64 x 20
    # (the frontier falls towards 64 x 27), which is seed noise, so all 21 train; with cutout 21 epochs read
    # 91.71 % (between its 20 and 27), below the plain recipe's 91.76 %. Both share one measurement.
    ({64: 40.1, 48: 28.8, 32: 18.2}, (64, 21, [64])),
    # Emulated AVX2 (fp32): 64 fits 4.5 epochs, 48 7.5, 32 13.8 (planned in tenths: half an epoch is over
    # 3 % of the budget): the narrow, long run is predicted best (13.8 epochs read 0.16 points below
    # 32 x 12: seed noise, not a reason to train fewer).
    ({64: 185.9, 48: 113.4, 32: 61.6}, (32, 13.8, [64, 48, 32])),
])
def test_the_cpu_presets_own_frontier_on_measured_speeds(tmp_path, speeds, expected):
    cfg = PipelineConfig(preset="cpu").resolved({})
    _check_cpu_plan(tmp_path, cfg, speeds, expected)


def test_a_width_far_out_of_reach_is_given_up_after_one_timed_step(tmp_path):
    # The AVX2 EPYC Zen 1's speeds (RESULTS.md): width 64's steps (21.7 s) would have to run at 8.6 s for
    # the 4 epochs of its shortest measured run, 48's (12.8 s) at 5.7 s for its 6: both more than twice as
    # slow, so one timed step each; the plain and the cutout recipe of width 64 share that step.
    cfg = PipelineConfig(preset="cpu").resolved({})
    zen1 = {64: 542.0, 48: 320.0, 32: 162.0}
    plan = _check_cpu_plan(tmp_path, cfg, zen1, (32, 5.2, [64, 48, 32]))
    assert [(o.width, o.recipe, o.probed) for o in plan.options] == [
        (64, {"cutout": 8}, True), (64, {}, True), (48, {}, True), (32, {}, False)]
    assert plan.predicted_accuracy == pytest.approx(predict(by_recipe(cfg.budget_frontier)[()], 32, 5.2))
    note = plan.width_note()
    assert note.count("width 64") == 1 and "width 48: about 320 s/epoch by its first timed step" in note
    # The next night: the probes stand, nothing is timed, the same plan.
    calls = []
    again = plan_training(cfg, "md5", tmp_path, MACHINE, _by_width({64: 1, 48: 1, 32: 1}, calls), train_images=50000)
    assert (again.width, again.planned_epochs, again.cached, calls) == (32, 5.2, True, [])
    # Two hours: 64 could be chosen with steps up to 2 x 68.4 s (4 epochs in 114 min): its probe does not
    # answer that, so it is measured in full, once for both recipes (12.6 epochs fit, predicted 90.94 %);
    # 48 too (21 fit, 91.38 %), and 48 trains.
    calls.clear()
    long = plan_training(cfg.model_copy(update={"time_budget_min": 120.0}), "md5", tmp_path, MACHINE,
                         _by_width(zen1, calls), train_images=50000)
    assert calls == [64, 48] and (long.width, long.planned_epochs) == (48, 21)
    assert not any(o.probed for o in long.options) and fewest_epochs(by_recipe(cfg.budget_frontier)[()], 64, 32) == 4


def test_the_cpu_preset_at_30_minutes_trains_its_most_accurate_measured_length(tmp_path):
    # The Zen 5 machine's width 64 (63 s per epoch): 27 epochs fit. Without cutout they read at 64 x 27's
    # 91.44 % and 64 x 20 measured 91.82 %, more than seed noise above; with 8-pixel cutout 64 x 27
    # measured 92.04 % / 91.74 % (seeds 0 / 1; mean 91.89 %): all 27 train, with cutout.
    cfg = PipelineConfig(preset="cpu", time_budget_min=30).resolved({})
    plan = _check_cpu_plan(tmp_path, cfg, {64: 63.0, 48: 41.0, 32: 20.0}, (64, 27, [64]))
    assert plan.recipe == {"cutout": 8} and plan.predicted_accuracy == pytest.approx((92.04 + 91.74) / 2)
    assert planned_config(cfg, plan).cutout == 8
    # 15 minutes fit 13.5 epochs at width 64, shorter than any cutout run measured: the plain recipe, where
    # 48 x 20.5 (91.38 %) beats 64 x 13.5 (read at 91.13 %).
    short = _check_cpu_plan(tmp_path, cfg.model_copy(update={"time_budget_min": 15.0}),
                            {64: 63.0, 48: 41.0, 32: 20.0}, (48, 20.5, [48]))
    assert short.recipe == {} and planned_config(cfg, short).cutout == 0


def test_a_recipe_changed_from_the_presets_is_planned_by_the_points_measured_with_that_change(tmp_path):
    speeds = {64: 63.0, 48: 41.0, 32: 20.0}  # Zen 5, as above

    def plan(**fields):
        cfg = PipelineConfig(preset="cpu", time_budget_min=15, **fields).resolved({})
        return plan_training(cfg, "md5", tmp_path, MACHINE, _by_width(speeds, []), train_images=50000)

    # 8-pixel cutout asked for: only cutout's points hold, and 13.5 epochs are shorter than any of them, so
    # the plan has no frontier to go by and takes the widest rule (the plain recipe would train 48 x 20.5).
    cut = plan(cutout=8)
    assert (cut.width, cut.planned_epochs, cut.predicted_accuracy, cut.frontier_ignored) == (64, 13.5, None, [])
    # A change no point measured: the preset's frontier is not used at all, and the plan says why.
    assert recipe_changes(PipelineConfig(preset="cpu", cutout=12, lr=1.5).resolved({})) == ["lr=1.5", "cutout=12"]
    changed = plan(cutout=12, lr=1.5)
    assert (changed.width, changed.planned_epochs, changed.predicted_accuracy) == (64, 13.5, None)
    assert changed.frontier_ignored == ["lr=1.5", "cutout=12"]
    assert "frontier not used, the recipe changes lr=1.5, cutout=12" in changed.summary()
    assert "this run changes lr=1.5, cutout=12" in changed.width_note()
    # The seed, precision and layout train the recipe the frontier measured.
    same = PipelineConfig(preset="cpu", seed=3, precision="fp32", channels_last=False).resolved({})
    assert recipe_changes(same) == []
    # A frontier given with the run is its own, changes and all.
    own = plan(cutout=12, lr=1.5, budget_frontier="64x12=91.0,64x16=91.3")
    assert own.frontier_ignored == [] and own.predicted_accuracy == pytest.approx(91.0 + 0.3 * math.log(13.5 / 12)
                                                                                  / math.log(16 / 12))


def _check_cpu_plan(tmp_path, cfg, speeds, expected):
    assert cfg.budget_frontier and cfg.max_epochs > cfg.epochs
    calls = []
    plan = plan_training(cfg, "md5", tmp_path, MACHINE, _by_width(speeds, calls), train_images=50000)
    assert (plan.width, plan.planned_epochs, calls) == expected
    assert plan.predicted_seconds <= 0.95 * cfg.time_budget_min * 60 and plan.predicted_accuracy is not None
    return plan


def test_the_report_puts_the_plan_beside_the_run_and_names_a_thread_mismatch():
    from cifar_pipeline.report.report import machine_section
    from cifar_pipeline.training.cpu_tuning import CpuSettings
    from cifar_pipeline.training.records import TrainRecord

    plan = BudgetPlan(budget_min=15, configured_epochs=16, planned_epochs=5.1, seconds_per_epoch=158.8,
                      images_per_second=308, machine=MACHINE, cached=False, measured_at="now", predicted_seconds=840,
                      width=32, threads=2, options=[
                          {"width": 64, "seconds_per_epoch": 542, "epochs": 0, "probed": True},
                          {"width": 32, "seconds_per_epoch": 158.8, "epochs": 5.1, "predicted_accuracy": 86.28}])
    settings = CpuSettings(cpu_class="AVX2", cpu=MACHINE, precision="fp32", channels_last=True, mkldnn=True,
                           threads=2, busy_cores=0.0, emulated=False, reasons=[])
    trained = TrainRecord(key="k", checkpoint="c", checkpoint_sha256="s", epochs=[], device="cpu", device_name="cpu",
                          precision="fp32", parameters=1, train_images=49000, steps=125, train_seconds=800,
                          resumed_from_epoch=None, warnings=[], wall_seconds=822, cpu_settings=settings)
    text = machine_section(trained, plan)
    assert "ran 5.1 epochs (of the configured 16) at width 32, planned to take 14.0 min; it took 13.7 min (91% " in text
    assert "width 64: about 542 s/epoch by its first timed step, far too slow" in text
    assert "thread(s) and training's" not in text
    # Training on fewer threads than the warm-up measured (other work took a core): said, since the plan's
    # time then held for another speed.
    one = trained.model_copy(update={"cpu_settings": settings.model_copy(update={"threads": 1})})
    assert "The warm-up's steps ran with 2 thread(s) and training's with 1" in machine_section(one, plan)
