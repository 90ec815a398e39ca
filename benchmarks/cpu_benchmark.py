"""CPU benchmark, measured side by side in one run (see benchmarks/RESULTS.md for results).

  (a) images/s of the seed blog's code path against the pipeline's `seed` preset (batch 16, same Net),
      interleaved trials, medians and their ratio;
  (b) the pipeline's seed epoch time as a fraction of the FLOP floor (measured fp32 matmul peak);
  (c) the `cpu` preset on the real archive: accuracy, training time, data time per epoch;
  (e) end to end, what a user waits for: wall time of `cifar-pipeline run --preset seed --epochs 2`
      (a fresh output folder: Prefect's start-up, decoding, training, evaluation, report) against the
      blog's script for 2 epochs (benchmarks/seed_code.py), interleaved;
  (p) what the `cpu` preset's time budget plans here: the flow's own warm-up measurement (seconds per
      epoch) and the epochs it allows, for each width in --budget-widths (default: the preset's).

Parts: seed (a), floor (b), cpu (c), e2e (e), budget (p); `--parts seed,e2e` runs only those. The header names
the CPU class the figures belong to (benchmarks/RESULTS.md keeps one table per class). To see an
AVX-512 machine behave as an AVX2 one, run under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
(the header then says "emulated").

    python benchmarks/cpu_benchmark.py --archive PATH --md5 HEX [--parts seed,floor,cpu,e2e,budget] [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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
from cifar_pipeline.data.dataset import build_dataset, extract_archive  # noqa: E402
from cifar_pipeline.data.download import fetch_archive  # noqa: E402
from cifar_pipeline.evaluation import evaluate  # noqa: E402
from cifar_pipeline.models import build_model  # noqa: E402
from cifar_pipeline.training.budget import measure_steps, plan_epochs  # noqa: E402
from cifar_pipeline.training.cpu_tuning import busy_cores, capability_forced, detect_cpu  # noqa: E402
from cifar_pipeline.training.loop import train  # noqa: E402

TRAIN_IMAGES = 50_000
PARTS = ("seed", "floor", "cpu", "e2e", "budget")
ROOT = Path(__file__).resolve().parents[1]


def machine_header() -> dict:
    """What the figures below depend on: printed first, so a table is filed under the right class."""
    cpu = detect_cpu()
    return {"cpu_model": cpu.model, "cpu_capability": cpu.capability, "cpu_class": cpu.cpu_class,
            "native_bf16": cpu.native_bf16, "emulated": capability_forced(), "threads": cpu.threads,
            # Other work at the start: the pipeline leaves busy cores alone, the blog's code does not,
            # so figures from a busy machine favour the pipeline. Measure on a quiet one (~0).
            "busy_cores_at_start": round(busy_cores(1.0), 2), "torch": torch.__version__}


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(PARTS)}")
    return parts


def timed_command(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of a command run as a user would, and its last output line."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    return wall, lines[-1] if lines else ""


def end_to_end_trial(archive: str, md5: str, root: Path, work: Path, epochs: int, trial: int) -> dict:
    """One interleaved pair: the blog's script, then the pipeline's CLI on a fresh output folder."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    blog_wall, blog_out = timed_command(
        [sys.executable, "benchmarks/seed_code.py", "--root", str(root), "--epochs", str(epochs), "--seed", str(trial)],
        env)
    pipe_wall, pipe_out = timed_command(
        [sys.executable, "-m", "flows", "run", "--preset", "seed", "--epochs", str(epochs), "--seed", str(trial),
         "--source", archive, "--md5", md5, "--output", str(work / f"e2e-{trial}")], env)
    summary = json.loads(pipe_out)
    return {"blog_seconds": blog_wall, "blog_accuracy": float(blog_out.split()[-1]),
            "pipeline_seconds": pipe_wall, "pipeline_accuracy": summary["test_accuracy"],
            "pipeline_task_seconds": summary["seconds"]}


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
            "seconds": epoch.seconds, "precision": record.precision}


def budget_plans(dataset, widths: list[int | None], **overrides) -> list[dict]:
    """The `cpu` preset's budget plan per width, from the same warm-up measurement the flow runs."""
    plans = []
    for width in widths:
        cfg = PipelineConfig(preset="cpu", **({"width": width} if width else {}), **overrides).resolved({})
        per_step, steps, timed = measure_steps(cfg, dataset)
        epoch_seconds = per_step * steps
        plans.append({"width": cfg.width, "seconds_per_epoch": epoch_seconds, "timed_steps": timed,
                      "budget_min": cfg.time_budget_min, "configured_epochs": cfg.epochs,
                      "planned_epochs": plan_epochs(cfg.time_budget_min, cfg.epochs, epoch_seconds)})
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", required=True)
    parser.add_argument("--md5", required=True)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--images", type=int, default=50000,
                        help="images per speed trial (default a full epoch: short trials overweight start-up)")
    parser.add_argument("--parts", type=parse_parts, default=list(PARTS), help="comma-separated: " + ",".join(PARTS))
    parser.add_argument("--skip-cpu-preset", action="store_true", help="same as leaving cpu out of --parts")
    parser.add_argument("--e2e-epochs", type=int, default=2)
    parser.add_argument("--e2e-trials", type=int, default=1)
    parser.add_argument("--budget-widths", default="", help="widths for the budget part, e.g. 48,64")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    parts = [p for p in args.parts if not (p == "cpu" and args.skip_cpu_preset)]
    results: dict = {"machine": machine_header(), "parts": parts}
    m = results["machine"]
    print(f"CPU: {m['cpu_model']}; torch capability {m['cpu_capability']}"
          f"{' (emulated: ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA set)' if m['emulated'] else ''}; "
          f"class {m['cpu_class']}; native bf16 {'yes' if m['native_bf16'] else 'no'}; {m['threads']} threads; "
          f"other work busy on {m['busy_cores_at_start']} cores; torch {m['torch']}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="cifar-bench-"))
    archive = fetch_archive([args.archive], args.md5, work)
    dataset = build_dataset(archive, work)
    root = work / "torchvision"
    extract_archive(archive.path, root)  # torchvision reads root/cifar-10-batches-py/

    fwd, fwd_bwd = seed_net_flops_per_image()
    results["seed_net_mflop_per_image"] = {"forward": fwd / 1e6, "forward_backward": fwd_bwd / 1e6}
    rows = [("CPU class / capability / threads", f"{m['cpu_class']} / {m['cpu_capability']}"
             f"{' (emulated)' if m['emulated'] else ''} / {m['threads']}")]

    # (a) interleaved: seed code, pipeline, seed code, pipeline, ... (the matmul peak between, for (b))
    if "seed" in parts or "floor" in parts:
        seed_code, pipeline, peaks = [], [], []
        for trial in range(args.trials):
            peaks.append(matmul_peak_gflops())
            if "seed" in parts:
                seed_code.append(train_images_per_second(str(root), args.images, seed=trial))
                pipeline.append(pipeline_seed_trial(dataset, work, args.images, trial))
                print(f"trial {trial}: seed code {seed_code[-1]:.0f} img/s, pipeline "
                      f"{pipeline[-1]['images_per_second']:.0f} img/s, matmul peak {peaks[-1]:.0f} GFLOP/s", flush=True)
        peak = statistics.median(peaks)
        floor_seconds = TRAIN_IMAGES * fwd_bwd / (peak * 1e9)
        results["b_flop_floor"] = {"matmul_peak_gflops": peak, "floor_epoch_seconds": floor_seconds}
        rows.append(("fp32 matmul peak (2048^3, median)", f"{peak:.0f} GFLOP/s"))
        if "seed" in parts:
            seed_ips = statistics.median(seed_code)
            pipe_ips = statistics.median(p["images_per_second"] for p in pipeline)
            epoch_seconds = TRAIN_IMAGES / pipe_ips
            results["a_seed_vs_pipeline"] = {
                "trials": args.trials, "images_per_trial": args.images, "batch_size": 16,
                "seed_code_images_per_second": seed_code,
                "pipeline_images_per_second": [p["images_per_second"] for p in pipeline],
                "pipeline_precision": pipeline[0]["precision"],
                "median_seed_code": seed_ips, "median_pipeline": pipe_ips, "ratio": pipe_ips / seed_ips,
                "pipeline_data_fraction_of_epoch": statistics.median(p["data_seconds"] / p["seconds"] for p in pipeline),
            }
            results["b_flop_floor"].update(seed_epoch_seconds=epoch_seconds, floor_fraction=floor_seconds / epoch_seconds)
            a = results["a_seed_vs_pipeline"]
            rows += [
                (f"seed code path, batch 16 (median of {args.trials})", f"{seed_ips:.0f} img/s"),
                (f"pipeline `seed` preset, batch 16, {a['pipeline_precision']} (median of {args.trials})",
                 f"{pipe_ips:.0f} img/s"),
                ("ratio pipeline / seed code, images/s", f"**{a['ratio']:.2f}x**"),
                ("pipeline data time, share of the epoch", f"{a['pipeline_data_fraction_of_epoch']:.1%}"),
                ("seed epoch: pipeline / fp32 FLOP floor",
                 f"{epoch_seconds:.1f} s / {floor_seconds:.1f} s (floor = {floor_seconds / epoch_seconds:.0%})"),
            ]
        rows.append(("Net FLOPs per image, forward / forward+backward",
                     f"{fwd / 1e6:.2f} / {fwd_bwd / 1e6:.2f} MFLOP"))

    # (e) end to end: what a user waits for
    if "e2e" in parts:
        trials = []
        for trial in range(args.e2e_trials):
            trials.append(end_to_end_trial(args.archive, args.md5, root, work, args.e2e_epochs, trial))
            t = trials[-1]
            print(f"e2e trial {trial}: blog script {t['blog_seconds']:.0f} s ({t['blog_accuracy']:.2%}), "
                  f"pipeline CLI {t['pipeline_seconds']:.0f} s ({t['pipeline_accuracy']:.2%})", flush=True)
        blog = statistics.median(t["blog_seconds"] for t in trials)
        pipe = statistics.median(t["pipeline_seconds"] for t in trials)
        results["e_end_to_end"] = {"epochs": args.e2e_epochs, "trials": trials, "median_blog_seconds": blog,
                                   "median_pipeline_seconds": pipe, "ratio": blog / pipe}
        rows += [(f"end to end, {args.e2e_epochs} epochs: blog script / pipeline CLI (wall)", f"{blog:.0f} s / {pipe:.0f} s"),
                 ("ratio end to end (blog wall / pipeline wall)", f"**{blog / pipe:.2f}x**")]

    # (c) the cpu preset, full length, on the real archive (its time budget is the flow's; here the 16 epochs)
    if "cpu" in parts:
        cfg = PipelineConfig(preset="cpu").resolved({})
        start = time.perf_counter()
        trained = train(cfg, dataset, work / "cpu-preset", progress=False)
        wall = time.perf_counter() - start
        evaluated = evaluate(cfg, trained, dataset, work / "cpu-preset")
        c = results["c_cpu_preset"] = {
            "test_accuracy": evaluated.accuracy, "train_seconds": trained.train_seconds, "train_wall_seconds": wall,
            "eval_seconds": evaluated.seconds, "epochs": [e.model_dump() for e in trained.epochs],
            "precision": trained.precision,
            "data_seconds_per_epoch": statistics.mean(e.data_seconds for e in trained.epochs),
            "compute_seconds_per_epoch": statistics.mean(e.seconds - e.data_seconds for e in trained.epochs),
        }
        rows += [("`cpu` preset test accuracy", f"**{c['test_accuracy']:.2%}**"),
                 ("`cpu` preset training time", f"{c['train_seconds'] / 60:.1f} min (wall {wall / 60:.1f} min), "
                                                f"{c['precision']}"),
                 ("`cpu` preset per epoch: data / compute",
                  f"{c['data_seconds_per_epoch']:.1f} s / {c['compute_seconds_per_epoch']:.1f} s")]

    # (p) the budget's plan for the cpu preset on this machine
    if "budget" in parts:
        widths = [int(w) for w in args.budget_widths.split(",") if w.strip()] or [None]
        results["p_budget"] = budget_plans(dataset, widths)
        for p in results["p_budget"]:
            rows.append((f"`cpu` preset, width {p['width']}: budget warm-up ({p['timed_steps']} steps) and plan",
                         f"{p['seconds_per_epoch']:.1f} s/epoch: {p['planned_epochs']:g} of {p['configured_epochs']:g} "
                         f"epochs in {p['budget_min']:g} min"))

    print("\n| measurement | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
