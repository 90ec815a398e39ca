"""A budgeted run that falls behind its plan is shortened to end within the budget, its lr annealed to the end."""

import pytest

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.training.budget import TARGET_SHARE, BudgetPlan
from cifar_pipeline.training.deadline import Deadline
from cifar_pipeline.training.loop import train
from cifar_pipeline.training.optim import Schedule, lr_factor

from .interrupted import same_weights, stopped_and_resumed

# The Zen 1 plan of the cpu preset: width 32, 97 steps per epoch, 3 early epochs at 166 s, then 147 s.
SPE = 97
ZEN1 = Deadline(budget_seconds=900, seconds_per_epoch=147.0, seconds_per_epoch_early=166.0, early_epochs=3)


def test_the_deadline_takes_both_measured_phases_from_the_plan():
    plan = BudgetPlan(budget_min=15, configured_epochs=16, planned_epochs=5.4, seconds_per_epoch=147.0,
                      seconds_per_epoch_early=166.0, early_epochs=3, images_per_second=333, machine="m",
                      cached=False, measured_at="now")
    assert Deadline.of(plan) == ZEN1
    # A plan recorded before the early phase was: the one measured speed for both.
    older = Deadline.of(plan.model_copy(update={"seconds_per_epoch_early": 0.0, "early_epochs": 0}))
    assert older.predicted(0, 2 * SPE, SPE) == pytest.approx(2 * 147.0)


def test_predicted_seconds_split_at_the_end_of_the_early_phase():
    assert ZEN1.predicted(0, SPE, SPE) == pytest.approx(166.0)
    assert ZEN1.predicted(2 * SPE, 4 * SPE, SPE) == pytest.approx(166.0 + 147.0)
    assert ZEN1.predicted(4 * SPE, 524, SPE) == pytest.approx(147.0 * (524 - 4 * SPE) / SPE)
    assert ZEN1.pace(2 * 166.0 * 1.4, 0, 2 * SPE, SPE) == pytest.approx(1.4)


def test_a_run_on_pace_is_not_touched_and_one_behind_ends_by_the_target_share():
    total = 524  # 5.4 epochs: predicted 3 x 166 + 2.4 x 147 = 851 s, 95 % of the budget
    done = 3 * SPE
    elapsed = 3 * 166.0 * 1.03  # validation and checkpoints: a few percent over the steps' own time
    assert ZEN1.shortened(elapsed, done, total, SPE, pace=1.03) is None
    # Seed 1 on the Zen 1: three epochs 40 % slow; the rest at that pace would end at about 1.3 x the budget.
    elapsed = 3 * 166.0 * 1.4
    new = ZEN1.shortened(elapsed, done, total, SPE, pace=1.4)
    assert done < new < total
    assert elapsed + 1.4 * ZEN1.predicted(done, new, SPE) <= TARGET_SHARE * 900
    assert elapsed + 1.4 * ZEN1.predicted(done, new + 1, SPE) > TARGET_SHARE * 900  # the most that fit
    # Already past the target share: one more step, so the run ends on a step that finishes its averaging.
    assert ZEN1.shortened(880.0, done, total, SPE, pace=1.4) == done + 1
    assert ZEN1.shortened(880.0, total - 1, total, SPE, pace=1.4) is None  # one step left: nothing to cut


def _triangle() -> PipelineConfig:
    return PipelineConfig(preset="cpu").resolved({})


def test_a_shortened_schedule_decays_from_where_it_is_to_its_end_value():
    cfg = _triangle()
    schedule = Schedule(cfg, 524)
    assert [schedule.factor(s) for s in (0, 100, 300)] == [lr_factor(s, 524, cfg) for s in (0, 100, 300)]
    before = schedule.factor(300)
    schedule.shorten(300, 400)
    assert schedule.total_steps == 400
    factors = [schedule.factor(s) for s in range(300, 400)]
    assert factors[0] == pytest.approx(before)  # no jump at the cut
    assert all(a > b for a, b in zip(factors, factors[1:]))
    assert schedule.factor(400) == pytest.approx(cfg.lr_end)
    # Checkpointed and restored, the cut stands.
    restored = Schedule(cfg, 524)
    restored.load_state_dict(schedule.state_dict())
    assert restored.factor(350) == schedule.factor(350)
    assert Schedule(cfg.model_copy(update={"schedule": "constant"}), 10, cut_step=5, cut_factor=1.0).factor(8) == 1.0


SMALL = dict(preset="cpu", epochs=3, batch_size=32, width=8)


def test_training_past_its_deadline_is_shortened_warns_and_resumes_the_shortened_run(tiny_dataset, tmp_path):
    record, _ = tiny_dataset
    cfg = PipelineConfig(**SMALL).resolved({})
    steps_per_epoch = 200 // 32
    # A budget of a millisecond: the first epoch alone runs past it, so the run ends one step after it.
    late = Deadline(budget_seconds=1e-3, seconds_per_epoch=1e-4, seconds_per_epoch_early=1e-4, early_epochs=3)
    short = train(cfg, record, tmp_path / "short", progress=False, deadline=late)
    assert short.shortened and (short.steps, short.planned_steps) == (steps_per_epoch + 1, 3 * steps_per_epoch)
    assert [e.steps for e in short.epochs] == [steps_per_epoch, 1]
    assert short.trained_epochs() == pytest.approx(7 / 6)
    (warning,) = [w for w in short.warnings if "shortened" in w]
    assert warning.startswith("After epoch 1, the machine ran") and "shortened from 3 to 1.17 epochs" in warning

    # Stopped after the shortened epoch and run again: the checkpoint's schedule holds, nothing more trains.
    resumed = stopped_and_resumed(cfg, record, tmp_path / "resumed", deadline=late)
    assert resumed.steps == short.steps and resumed.resumed_from_epoch == 2
    assert same_weights(short.checkpoint, resumed.checkpoint) == []


def test_a_deadline_with_time_to_spare_trains_exactly_the_planned_run(tiny_dataset, tmp_path):
    record, _ = tiny_dataset
    cfg = PipelineConfig(**SMALL).resolved({})
    plain = train(cfg, record, tmp_path / "plain", progress=False)
    roomy = Deadline(budget_seconds=3600, seconds_per_epoch=1.0, seconds_per_epoch_early=1.0, early_epochs=3)
    kept = train(cfg, record, tmp_path / "kept", progress=False, deadline=roomy)
    assert not kept.shortened and kept.steps == plain.steps == kept.planned_steps
    assert kept.warnings == plain.warnings and not any("shortened" in w for w in kept.warnings)
    assert same_weights(plain.checkpoint, kept.checkpoint) == []
