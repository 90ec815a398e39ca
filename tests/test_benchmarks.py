"""The benchmark's pieces run (on the tiny archive), so the measurement script cannot silently rot."""

import argparse
import json

import pytest

from benchmarks.cpu_benchmark import (
    budget_plans,
    end_to_end_trial,
    machine_header,
    matmul_peak_gflops,
    parse_parts,
    seed_net_flops_per_image,
)
from benchmarks.seed_code import blog_run, train_images_per_second
from cifar_pipeline.data.dataset import extract_archive


def test_seed_code_path_trains_from_a_rebuilt_archive(tiny_archive, tmp_path):
    extract_archive(tiny_archive[0], tmp_path)
    assert train_images_per_second(str(tmp_path), 64) > 0
    assert 0 <= blog_run(str(tmp_path), epochs=1) <= 1


def test_flop_count_matches_the_net():
    forward, both = seed_net_flops_per_image()
    # 9.62 M multiply-adds forward; backward adds two passes except conv1's input gradient.
    assert round(forward / 1e6, 2) == 19.24 and round(both / 1e6, 2) == 56.55
    assert matmul_peak_gflops(n=256, repeats=1) > 0


def test_parts_are_checked_and_the_header_names_the_cpu_class():
    assert parse_parts("seed, e2e") == ["seed", "e2e"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown part"):
        parse_parts("seed,warp")
    header = machine_header()
    assert header["cpu_class"] and header["cpu_capability"] and header["threads"] >= 1
    assert isinstance(header["native_bf16"], bool) and json.dumps(header)


@pytest.mark.slow
def test_end_to_end_trial_times_the_blog_script_and_the_cli(tiny_archive, tmp_path):
    path, md5 = tiny_archive
    extract_archive(path, tmp_path / "tv")
    trial = end_to_end_trial(str(path), md5, tmp_path / "tv", tmp_path, epochs=1, trial=0)
    assert trial["blog_seconds"] > 0 and trial["pipeline_seconds"] > trial["pipeline_task_seconds"] > 0
    assert 0 <= trial["blog_accuracy"] <= 1 and 0 <= trial["pipeline_accuracy"] <= 1


def test_budget_part_plans_the_cpu_preset_per_width(tiny_dataset):
    record, _ = tiny_dataset
    plans = budget_plans(record, [8, 16], batch_size=32, precision="fp32")
    assert [p["width"] for p in plans] == [8, 16]
    for p in plans:
        assert p["seconds_per_epoch"] > 0 and p["timed_steps"] >= 1 and p["budget_min"] == 15
        assert p["planned_epochs"] == p["configured_epochs"]  # a tiny dataset fits any budget


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
