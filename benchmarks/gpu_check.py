"""GPU check: the `fast` preset against the published airbench94, side by side, same data, one run.

Prepared for a machine with one NVIDIA GPU and no network (see benchmarks/gpu_check.sh for how to
carry the data and the wheels there). It rebuilds the archive from the 56 MB JPEG bundle, then, for
each seed in turn, trains and evaluates the pipeline's `fast` preset and airbench94 (the `airbench`
package from PyPI) on the same arrays, and prints mean/min accuracy and training seconds for both.

    python benchmarks/gpu_check.py --npz PATH/cifar10-jpeg.npz --bundle PATH/jpeg_bundle.py [--seeds 5]

`--smoke` shrinks everything (2 epochs of the fast recipe on 2,048 images) to check the script on a
CPU; airbench needs CUDA and is skipped there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_pipeline.config import PipelineConfig  # noqa: E402
from cifar_pipeline.data.dataset import build_dataset, load_arrays  # noqa: E402
from cifar_pipeline.data.download import fetch_archive  # noqa: E402
from cifar_pipeline.evaluation import evaluate  # noqa: E402
from cifar_pipeline.training.loop import train  # noqa: E402


def rebuild_archive(npz: Path, bundle: Path, out: Path) -> str:
    subprocess.run([sys.executable, str(bundle), "decode", str(npz), str(out)], check=True)
    with open(out, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_ours(dataset, work: Path, seed: int, overrides: dict) -> tuple[float, float]:
    cfg = PipelineConfig(preset="fast", seed=seed, **overrides).resolved({})
    start = time.perf_counter()
    trained = train(cfg, dataset, work / "ours", progress=False)
    sync()
    wall = time.perf_counter() - start
    # train_seconds: the epoch loop, timed like airbench's own timer; wall adds data loading and set-up.
    print(f"  ours seed {seed}: {trained.train_seconds:.2f} s training ({wall:.2f} s wall)", flush=True)
    return evaluate(cfg, trained, dataset, work / "ours").accuracy, trained.train_seconds


def prepare_airbench_data(dataset, folder: Path) -> None:
    """airbench's CifarLoader reads cifar10/{train,test}.pt; writing them keeps it from downloading."""
    arrays = load_arrays(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    for name, x, y in (("train", arrays.x_train, arrays.y_train), ("test", arrays.x_test, arrays.y_test)):
        torch.save({"images": torch.from_numpy(x), "labels": torch.from_numpy(y), "classes": arrays.classes},
                   folder / f"{name}.pt")


def run_airbench(seed: int) -> tuple[float, float]:
    import airbench

    torch.manual_seed(seed)
    loader = airbench.CifarLoader("cifar10", train=True, batch_size=1024, aug=dict(flip=True, translate=2),
                                  altflip=True)
    test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    sync()
    start = time.perf_counter()
    model = airbench.train94(loader, verbose=False)
    sync()
    seconds = time.perf_counter() - start
    accuracy = airbench.evaluate(model, test_loader, tta_level=2)
    print(f"  airbench94 seed {seed}: {seconds:.2f} s training", flush=True)
    return accuracy, seconds


def summary(name: str, accs: list[float], secs: list[float]) -> dict:
    return {"name": name, "mean_accuracy": statistics.mean(accs), "min_accuracy": min(accs),
            "mean_train_seconds": statistics.mean(secs), "accuracies": accs, "train_seconds": secs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", required=True, type=Path)
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    archive = work / "cifar-10-python.tar.gz"
    md5 = rebuild_archive(args.npz, args.bundle, archive)
    dataset = build_dataset(fetch_archive([str(archive)], md5, work / "cache"), work / "cache")
    cuda = torch.cuda.is_available()
    print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU'}; torch {torch.__version__}; archive md5 {md5}")
    overrides = {"epochs": 2, "train_subset": 2048, "test_subset": 1000, "batch_size": 256} if args.smoke else {}

    # Warm-ups (untimed): torch.compile and cuDNN autotuning happen once per process for each side.
    run_ours(dataset, work / "warmup", seed=10_000, overrides={**overrides, "epochs": 1})
    use_airbench = cuda and not args.smoke
    if use_airbench:
        prepare_airbench_data(dataset, work / "airbench" / "cifar10")
        os.chdir(work / "airbench")
        import airbench

        airbench.warmup94(verbose=False)

    ours, theirs = ([], []), ([], [])
    for seed in range(args.seeds):  # interleaved, so drift in clocks or temperature hits both
        acc, sec = run_ours(dataset, work, seed, overrides)
        ours[0].append(acc), ours[1].append(sec)
        if use_airbench:
            acc, sec = run_airbench(seed)
            theirs[0].append(acc), theirs[1].append(sec)
    results = [summary("cifar-pipeline fast", *ours)]
    if use_airbench:
        results.append(summary("airbench94 (PyPI airbench)", *theirs))
    print("\n| recipe | mean acc | min acc | mean training s |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['mean_accuracy']:.2%} | {r['min_accuracy']:.2%} | {r['mean_train_seconds']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
