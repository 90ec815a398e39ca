"""Does what the pipeline sets in a process slow the blog's code run after it in that process?

Issue 20 found the benchmark's in-process blog side a quarter slower than the blog's script alone.
Each case is a fresh interpreter: the blog's loop (`seed_code.train_images_per_second`) alone, after
the pipeline's heap setting, and after a short pipeline `seed` training; each case runs `--repeats`
times. (benchmarks/RESULTS.md, "Why the in-process blog side measured slower".)

    python benchmarks/carryover_check.py --archive A --md5 M [--images 8000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.user_runs import user_env  # noqa: E402

SETUP = {
    "fresh process": "",
    "after tune_cpu_allocator": "from cifar_pipeline.training.runtime import tune_cpu_allocator; tune_cpu_allocator()",
    "after a pipeline seed trial": (
        "import pathlib, tempfile\n"
        "from cifar_pipeline.config import PipelineConfig\n"
        "from cifar_pipeline.data.dataset import build_dataset\n"
        "from cifar_pipeline.data.download import fetch_archive\n"
        "from cifar_pipeline.training.loop import train\n"
        "w = pathlib.Path(tempfile.mkdtemp())\n"
        "d = build_dataset(fetch_archive([ARCHIVE], MD5, w), w)\n"
        "train(PipelineConfig(preset='seed', epochs=1, train_subset=4000).resolved({}), d, w / 'c', progress=False)\n"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", required=True)
    parser.add_argument("--md5", required=True)
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from cifar_pipeline.data.dataset import extract_archive

    root = Path(tempfile.mkdtemp(prefix="carryover-"))
    extract_archive(args.archive, root)
    for name, setup in SETUP.items():
        code = (f"ARCHIVE={args.archive!r}; MD5={args.md5!r}\n{setup}\n"
                "from benchmarks.seed_code import train_images_per_second\n"
                f"print(round(train_images_per_second({str(root)!r}, {args.images})))")
        runs = [subprocess.run([sys.executable, "-c", code], env=user_env(), cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip() for _ in range(args.repeats)]
        print(f"{name}: {', '.join(runs)} img/s", flush=True)


if __name__ == "__main__":
    main()
