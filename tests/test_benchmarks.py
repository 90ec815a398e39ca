"""The benchmark's pieces run (on the tiny archive), so the measurement script cannot silently rot."""

from benchmarks.cpu_benchmark import matmul_peak_gflops, seed_net_flops_per_image
from benchmarks.seed_code import train_images_per_second
from cifar_pipeline.dataset import extract_archive


def test_seed_code_path_trains_from_a_rebuilt_archive(tiny_archive, tmp_path):
    extract_archive(tiny_archive[0], tmp_path)
    assert train_images_per_second(str(tmp_path), 64) > 0


def test_flop_count_matches_the_net():
    forward, both = seed_net_flops_per_image()
    # 9.62 M multiply-adds forward; backward adds two passes except conv1's input gradient.
    assert round(forward / 1e6, 2) == 19.24 and round(both / 1e6, 2) == 56.55
    assert matmul_peak_gflops(n=256, repeats=1) > 0
