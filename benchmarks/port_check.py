"""Is the `fast` preset a faithful port of airbench94? Both on the CPU, on the same archive, side by side.

The published airbench94 (PyPI `airbench` 0.1.8) reached 89.88 % without TTA and 90.57 % with TTA 2 on
this project's JPEG-derived archive (seed 0, 9.9 epochs, fp32 on the CPU) against 94.01 % on the
official data. This script trains the pipeline's `fast` preset on the CPU (9.9 epochs, TTA 2, fp32
by default so that both sides compute the same way) for each seed and, given the airbench source
(`pip download --no-deps airbench==0.1.8` and unpack it; pass the folder holding `airbench/`), the
published package on the same images, patched at run time only in its device and dtype calls
(.cuda() and .half() become no-ops and fp32, CUDA events become a CPU clock, data loads to the CPU).

    python benchmarks/port_check.py --archive PATH --md5 HEX [--seeds 0,1] [--airbench-src DIR [--airbench-seeds 0]]

About 19 min per seed and side on a 2-core AVX-512 BF16 CPU in fp32 (results: benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_pipeline.config import PipelineConfig  # noqa: E402
from cifar_pipeline.data.dataset import build_dataset, load_arrays  # noqa: E402
from cifar_pipeline.data.download import fetch_archive  # noqa: E402
from cifar_pipeline.evaluation import evaluate  # noqa: E402
from cifar_pipeline.training.loop import train  # noqa: E402


def pipeline_side(dataset, work: Path, seed: int, precision: str, overrides: dict) -> dict:
    cfg = PipelineConfig(preset="fast", device="cpu", compile=False, precision=precision, seed=seed, tta=2,
                         **overrides).resolved({})
    trained = train(cfg, dataset, work / "pipeline", progress=False)
    tta2 = evaluate(cfg, trained, dataset, work / "pipeline")
    tta0 = evaluate(cfg.model_copy(update={"tta": 0}), trained, dataset, work / "pipeline")
    return {"seed": seed, "epochs": cfg.epochs, "precision": trained.precision, "accuracy_tta0": tta0.accuracy,
            "accuracy_tta2": tta2.accuracy, "train_seconds": trained.train_seconds}


class _CpuEvent:
    """torch.cuda.Event(enable_timing=True) on the CPU clock."""

    def __init__(self, *args, **kwargs) -> None:
        self.t = 0.0

    def record(self, *args) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _CpuEvent) -> float:
        return 1e3 * (end.t - self.t)


@contextlib.contextmanager
def airbench_on_cpu(src: str) -> Iterator:
    """Import airbench from `src` with its device and dtype calls patched; undone on exit."""
    saved = (torch.Tensor.half, nn.Module.half, nn.Module.cuda, torch.cuda.Event, torch.cuda.synchronize)
    torch.Tensor.half = lambda self, *a, **k: self.float()
    nn.Module.half = lambda self: self.float()
    nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.Event = _CpuEvent
    torch.cuda.synchronize = lambda *a, **k: None
    sys.path.insert(0, src)
    try:
        import airbench
        from airbench import utils

        init = utils.CifarLoader.__init__
        # Its loaders map the data to GPU 0; everything else it does follows the data's device.
        utils.CifarLoader.__init__ = lambda self, *a, gpu=0, **k: init(self, *a, gpu="cpu", **k)
        try:
            yield airbench
        finally:
            utils.CifarLoader.__init__ = init
    finally:
        sys.path.remove(src)
        torch.Tensor.half, nn.Module.half, nn.Module.cuda, torch.cuda.Event, torch.cuda.synchronize = saved


def write_airbench_data(dataset, folder: Path) -> None:
    """airbench's cached format (cifar10/train.pt, test.pt) from this project's decoded arrays."""
    arrays = load_arrays(dataset)
    (folder / "cifar10").mkdir(parents=True, exist_ok=True)
    for name, x, y in (("train", arrays.x_train, arrays.y_train), ("test", arrays.x_test, arrays.y_test)):
        torch.save({"images": torch.from_numpy(x.copy()), "labels": torch.from_numpy(y.astype("int64")),
                    "classes": list(arrays.classes)}, folder / "cifar10" / f"{name}.pt")


def airbench_side(src: str, dataset, work: Path, seed: int, epochs: float = 9.9, batch_size: int = 1024) -> dict:
    folder = work / "airbench"
    if not (folder / "cifar10" / "train.pt").exists():
        write_airbench_data(dataset, folder)
    cwd = os.getcwd()
    os.chdir(folder)  # airbench reads ./cifar10/
    try:
        with airbench_on_cpu(src) as airbench:
            from airbench import lib_airbench94, utils

            torch.manual_seed(seed)
            loader = utils.CifarLoader("cifar10", train=True, batch_size=batch_size,
                                       aug=lib_airbench94.hyp["aug"], altflip=True)
            start = time.perf_counter()
            model = airbench.train94(loader, epochs=epochs, verbose=False)
            seconds = time.perf_counter() - start
            test = utils.CifarLoader("cifar10", train=False, batch_size=2000)
            return {"seed": seed, "epochs": epochs, "accuracy_tta0": utils.evaluate(model, test, tta_level=0),
                    "accuracy_tta2": utils.evaluate(model, test, tta_level=2), "train_seconds": seconds}
    finally:
        os.chdir(cwd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", required=True)
    parser.add_argument("--md5", required=True)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="the pipeline side's precision (airbench on the CPU runs fp32)")
    parser.add_argument("--airbench-src", default=None, help="folder holding the airbench 0.1.8 package")
    parser.add_argument("--airbench-seeds", default=None,
                        help="seeds for the airbench side (default: --seeds); each costs as much as a pipeline seed")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cifar-port-"))
    archive = fetch_archive([args.archive], args.md5, work)
    dataset = build_dataset(archive, work)
    seeds = [int(s) for s in args.seeds.split(",")]
    airbench_seeds = seeds if args.airbench_seeds is None else [int(s) for s in args.airbench_seeds.split(",")]
    results: dict = {"archive_md5": args.md5, "pipeline": [], "airbench": []}
    for seed in seeds:  # interleaved, so both sides see the same machine conditions
        results["pipeline"].append(pipeline_side(dataset, work, seed, args.precision, {}))
        print(f"pipeline fast, seed {seed}: {json.dumps(results['pipeline'][-1])}", flush=True)
        if args.airbench_src and seed in airbench_seeds:
            results["airbench"].append(airbench_side(args.airbench_src, dataset, work, seed))
            print(f"airbench94 0.1.8, seed {seed}: {json.dumps(results['airbench'][-1])}", flush=True)
    print("\n| side | seeds | TTA 0 (mean) | TTA 2 (mean) | training (mean) |\n|---|---|---|---|---|")
    for side in ("pipeline", "airbench"):
        rows = results[side]
        if rows:
            print(f"| {side} | {','.join(str(r['seed']) for r in rows)} | {statistics.mean(r['accuracy_tta0'] for r in rows):.2%} | "
                  f"{statistics.mean(r['accuracy_tta2'] for r in rows):.2%} | "
                  f"{statistics.mean(r['train_seconds'] for r in rows) / 60:.1f} min |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
