"""CPU benchmark, measured side by side in one run (see benchmarks/RESULTS.md for results).

  (a) images/s of the seed blog's code path against the pipeline's `seed` preset (batch 16, same Net),
      interleaved trials, medians and their ratio;
  (b) the pipeline's seed epoch time as a fraction of the FLOP floor (measured fp32 matmul peak);
  (c) the `cpu` preset on the real archive: accuracy, training time, data time per epoch.

    python benchmarks/cpu_benchmark.py --archive PATH --md5 HEX [--trials 5] [--images 8000] [--skip-cpu-preset]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.seed_code import train_images_per_second  # noqa: E402
from cifar_pipeline.config import PipelineConfig  # noqa: E402
from cifar_pipeline.dataset import build_dataset, extract_archive  # noqa: E402
from cifar_pipeline.download import fetch_archive  # noqa: E402
from cifar_pipeline.evaluation import evaluate  # noqa: E402
from cifar_pipeline.models import build_model  # noqa: E402
from cifar_pipeline.training import train  # noqa: E402

TRAIN_IMAGES = 50_000


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        times.append((time.perf_counter() - start) / 4)
    return 2 * n**3 / min(times) / 1e9


def seed_net_flops_per_image(batch: int = 16) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per image, counted by torch's FlopCounterMode."""
    model = build_model("seed_net")
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            model(x)
    with FlopCounterMode(display=False) as both:
        F.cross_entropy(model(x), y).backward()
    return fwd.get_total_flops() / batch, both.get_total_flops() / batch


def pipeline_seed_trial(dataset, cache: Path, n_images: int, trial: int) -> dict:
    cfg = PipelineConfig(preset="seed", epochs=1, train_subset=n_images, seed=trial).resolved({})
    record = train(cfg, dataset, cache / f"seed-trial-{trial}", progress=False)
    epoch = record.epochs[0]
    return {"images_per_second": epoch.images_per_second, "data_seconds": epoch.data_seconds,
            "seconds": epoch.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", required=True)
    parser.add_argument("--md5", required=True)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--images", type=int, default=8000, help="images per speed trial (500 steps at 8000)")
    parser.add_argument("--skip-cpu-preset", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cifar-bench-"))
    archive = fetch_archive([args.archive], args.md5, work)
    dataset = build_dataset(archive.path, archive.md5, work)
    root = work / "torchvision"
    extract_archive(archive.path, root)  # torchvision reads root/cifar-10-batches-py/

    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    fwd, fwd_bwd = seed_net_flops_per_image()
    results["seed_net_mflop_per_image"] = {"forward": fwd / 1e6, "forward_backward": fwd_bwd / 1e6}

    # (a) interleaved: seed code, pipeline, seed code, pipeline, ...
    seed_code, pipeline, peaks = [], [], []
    for trial in range(args.trials):
        peaks.append(matmul_peak_gflops())
        seed_code.append(train_images_per_second(str(root), args.images, seed=trial))
        pipeline.append(pipeline_seed_trial(dataset, work, args.images, trial))
        print(f"trial {trial}: seed code {seed_code[-1]:.0f} img/s, pipeline "
              f"{pipeline[-1]['images_per_second']:.0f} img/s, matmul peak {peaks[-1]:.0f} GFLOP/s", flush=True)
    seed_ips = statistics.median(seed_code)
    pipe_ips = statistics.median(p["images_per_second"] for p in pipeline)
    peak = statistics.median(peaks)
    data_fraction = statistics.median(p["data_seconds"] / p["seconds"] for p in pipeline)
    epoch_seconds = TRAIN_IMAGES / pipe_ips
    floor_seconds = TRAIN_IMAGES * fwd_bwd / (peak * 1e9)
    results["a_seed_vs_pipeline"] = {
        "trials": args.trials, "images_per_trial": args.images, "batch_size": 16,
        "seed_code_images_per_second": seed_code, "pipeline_images_per_second": [p["images_per_second"] for p in pipeline],
        "median_seed_code": seed_ips, "median_pipeline": pipe_ips, "ratio": pipe_ips / seed_ips,
        "pipeline_data_fraction_of_epoch": data_fraction,
    }
    results["b_flop_floor"] = {
        "matmul_peak_gflops": peak, "seed_epoch_seconds": epoch_seconds, "floor_epoch_seconds": floor_seconds,
        "floor_fraction": floor_seconds / epoch_seconds,
    }

    # (c) the cpu preset, full length, on the real archive
    if not args.skip_cpu_preset:
        cfg = PipelineConfig(preset="cpu").resolved({})
        start = time.perf_counter()
        trained = train(cfg, dataset, work / "cpu-preset", progress=False)
        wall = time.perf_counter() - start
        evaluated = evaluate(cfg, trained, dataset, work / "cpu-preset")
        results["c_cpu_preset"] = {
            "test_accuracy": evaluated.accuracy, "train_seconds": trained.train_seconds, "train_wall_seconds": wall,
            "eval_seconds": evaluated.seconds, "epochs": [e.model_dump() for e in trained.epochs],
            "data_seconds_per_epoch": statistics.mean(e.data_seconds for e in trained.epochs),
            "compute_seconds_per_epoch": statistics.mean(e.seconds - e.data_seconds for e in trained.epochs),
        }

    a, b = results["a_seed_vs_pipeline"], results["b_flop_floor"]
    print("\n| measurement | value |\n|---|---|")
    print(f"| seed code path, batch 16 (median of {args.trials}) | {a['median_seed_code']:.0f} img/s |")
    print(f"| pipeline `seed` preset, batch 16 (median of {args.trials}) | {a['median_pipeline']:.0f} img/s |")
    print(f"| ratio pipeline / seed code | **{a['ratio']:.2f}x** |")
    print(f"| pipeline data time, share of the epoch | {a['pipeline_data_fraction_of_epoch']:.1%} |")
    print(f"| Net FLOPs per image, forward / forward+backward | "
          f"{results['seed_net_mflop_per_image']['forward']:.2f} / "
          f"{results['seed_net_mflop_per_image']['forward_backward']:.2f} MFLOP |")
    print(f"| fp32 matmul peak (2048^3, median) | {b['matmul_peak_gflops']:.0f} GFLOP/s |")
    print(f"| seed epoch: pipeline / FLOP floor | {b['seed_epoch_seconds']:.1f} s / {b['floor_epoch_seconds']:.1f} s "
          f"(floor = {b['floor_fraction']:.0%} of the epoch) |")
    if "c_cpu_preset" in results:
        c = results["c_cpu_preset"]
        print(f"| `cpu` preset test accuracy | **{c['test_accuracy']:.2%}** |")
        print(f"| `cpu` preset training time | {c['train_seconds'] / 60:.1f} min (wall {c['train_wall_seconds'] / 60:.1f} min) |")
        print(f"| `cpu` preset per epoch: data / compute | {c['data_seconds_per_epoch']:.1f} s / "
              f"{c['compute_seconds_per_epoch']:.1f} s |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
