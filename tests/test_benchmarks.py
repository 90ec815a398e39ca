"""The benchmark's pieces run (on the tiny archive), so the measurement script cannot silently rot."""

import argparse
import json

import pytest

from benchmarks.cpu_benchmark import (
    budget_plans,
    frontier_point,
    machine_header,
    matmul_peak_gflops,
    parse_parts,
    parse_points,
    point_recipe,
    seed_net_flops_per_image,
    seed_trial,
)
from benchmarks.seed_code import blog_run, train_images_per_second
from cifar_pipeline.data.dataset import extract_archive


def test_seed_code_path_trains_from_a_rebuilt_archive(tiny_archive, tmp_path):
    extract_archive(tiny_archive[0], tmp_path)
    assert train_images_per_second(str(tmp_path), 64) > 0
    blog = blog_run(str(tmp_path), epochs=1)
    assert 0 <= blog["test_accuracy"] <= 1 and len(blog["epoch_seconds"]) == 1 and blog["images_per_second"][0] > 0


def test_flop_count_matches_the_net():
    forward, both = seed_net_flops_per_image()
    # 9.62 M multiply-adds forward; backward adds two passes except conv1's input gradient.
    assert round(forward / 1e6, 2) == 19.24 and round(both / 1e6, 2) == 56.55
    assert matmul_peak_gflops(n=256, repeats=1) > 0


def test_parts_are_checked_and_the_header_names_the_cpu_class():
    assert parse_parts("seed, fixed") == ["seed", "fixed"]
    assert parse_points("64x16, 96x12.5,64x27[cutout=8; tta=1]") == [(64, 16.0, {}), (96, 12.5, {}),
                                                                   (64, 27.0, {"cutout": "8", "tta": "1"})]
    with pytest.raises(argparse.ArgumentTypeError, match="WIDTHxEPOCHS"):
        parse_points("64-16")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown part"):
        parse_parts("seed,warp")
    header = machine_header()
    assert header["cpu_class"] and header["cpu_capability"] and header["threads"] >= 1
    assert isinstance(header["native_bf16"], bool) and json.dumps(header)


@pytest.mark.slow
def test_seed_trial_runs_both_sides_as_their_own_processes(tiny_archive, tmp_path):
    path, md5 = tiny_archive
    extract_archive(path, tmp_path / "tv")
    trial = seed_trial(str(path), md5, tmp_path / "tv", tmp_path, epochs=1, trial=0)
    assert trial["blog_seconds"] > 0 and trial["pipeline_seconds"] > trial["pipeline_flow_seconds"] > 0
    assert 0 <= trial["blog_accuracy"] <= 1 and 0 <= trial["pipeline_accuracy"] <= 1
    assert len(trial["blog_images_per_second"]) == 1 and len(trial["pipeline_images_per_second"]) == 1
    assert "train" in trial["pipeline_task_seconds"]


@pytest.mark.slow
def test_frontier_point_trains_at_fixed_epochs_and_is_cached_the_second_time(tiny_archive, tmp_path):
    path, md5 = tiny_archive
    small = ("--batch-size", "32", "--precision", "fp32")
    first = frontier_point(str(path), md5, tmp_path / "out", width=8, epochs=1, seed=0, extra=small)
    assert first["width"] == 8 and 0 <= first["test_accuracy"] <= 1 and not first["cached"]
    again = frontier_point(str(path), md5, tmp_path / "out", width=8, epochs=1, seed=0, extra=small)
    assert again["cached"] and again["test_accuracy"] == first["test_accuracy"]
    cut = frontier_point(str(path), md5, tmp_path / "out", width=8, epochs=1, seed=0, extra=small,
                         recipe={"cutout": "4"})
    assert not cut["cached"] and point_recipe(cut) == "[cutout=4]"  # another recipe: another training key


def test_budget_part_plans_the_cpu_preset_per_width(tiny_dataset):
    record, _ = tiny_dataset
    plans = budget_plans(record, [8, 16], batch_size=32, precision="fp32")
    assert [p["width"] for p in plans] == [8, 16]
    for p in plans:
        assert p["seconds_per_epoch"] > 0 and p["seconds_per_epoch_early"] > 0 and p["timed_steps"] >= 6
        assert p["budget_min"] == 15
        assert p["planned_epochs"] == p["max_epochs"]  # a tiny dataset fits any budget, up to the cap


def test_port_check_sides_run_on_the_tiny_archive(tiny_dataset, tmp_path):
    import os

    import torch

    from benchmarks.port_check import airbench_side, pipeline_side

    record, _ = tiny_dataset
    ours = pipeline_side(record, tmp_path, seed=0, precision="fp32", overrides=dict(epochs=1, batch_size=32, width=8))
    assert ours["precision"] == "fp32" and 0 <= ours["accuracy_tta2"] <= 1
    src = os.environ.get("AIRBENCH_SRC")  # an unpacked `pip download --no-deps airbench==0.1.8`
    if not src:
        pytest.skip("AIRBENCH_SRC not set: the published package's side was not run")
    theirs = airbench_side(src, record, tmp_path, seed=0, epochs=1, batch_size=32)
    assert 0 <= theirs["accuracy_tta2"] <= 1 and theirs["train_seconds"] > 0
    assert torch.Tensor.half(torch.ones(1)).dtype == torch.float16  # the patches are undone


def test_profiling_script_compares_options(capsys):
    from benchmarks.profile_seed import compare

    compare(steps=2, rounds=1)
    out = capsys.readouterr().out
    assert "channels_last, 1 thread" in out and "contiguous" in out and "half batch" in out


@pytest.mark.slow
def test_fixed_cost_part_measures_each_figure_beside_its_reference(tiny_archive, tmp_path):
    from benchmarks.fixed_cost import fixed_costs, rows

    path, md5 = tiny_archive
    out = fixed_costs(str(path), md5, tmp_path, repeats=1)
    for name in ("import torch", "cifar-pipeline --help", "empty flow run (temporary server)",
                 "smoke, cached rerun (temporary server)", "smoke, cached rerun (local server)",
                 "smoke, command to first training step (local server)"):
        assert out[name] > 0, name
    assert out["first optimizer: torch.optim.SGD"] > 0 and out["first optimizer: cifar_pipeline SGD"] >= 0
    assert out["smoke, cached rerun (local server): summary to exit"] >= 0
    assert out["smoke, cached rerun (local server): summary to exit, ordinary"] >= 0
    assert "train" in out["smoke, first run: flow steps (s)"]
    table = dict(rows(out))
    assert "x**" in table["`--preset smoke`, cached rerun / empty flow run (target <= 2x)"]
