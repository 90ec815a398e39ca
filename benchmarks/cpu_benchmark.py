"""CPU benchmark, measured side by side in one run (see benchmarks/RESULTS.md for results).

  seed     the blog's script against `cifar-pipeline run --preset seed`, each in its own process as a
           user runs them (benchmarks/user_runs.py): images/s over full epochs and end-to-end wall time
           for --seed-epochs epochs (10 is `make run`), --trials pairs, interleaved;
  floor    the pipeline's seed epoch time as a fraction of the FLOP floor (measured fp32 matmul peak);
  cpu      the `cpu` preset at its configured 16 epochs on the real archive: accuracy, training time;
  budget   what the `cpu` preset's time budget plans here: the warm-up's measured speeds per width (both
           phases) and the epochs each width would get (--budget-widths, default the preset's);
  fixed    a run's fixed cost beside its references (benchmarks/fixed_cost.py);
  frontier accuracy per (width, epochs) point of the `cpu` recipe, trained through the CLI with
           `--time-budget-min 0 --width W --epochs E --seed S` into one output folder (so a point
           measured once is a cache hit afterwards); prints the `budget_frontier` entries.

`--parts seed,fixed` runs only those. The header names the CPU class the figures belong to
(benchmarks/RESULTS.md keeps one table per class). To see an AVX-512 machine behave as an AVX2 one,
run under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 (the header
then says "emulated").

    python benchmarks/cpu_benchmark.py --archive PATH --md5 HEX [--parts seed,floor,cpu,budget,fixed,frontier]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import fixed_cost  # noqa: E402
from benchmarks.user_runs import blog_script, pipeline_run, training_record  # noqa: E402
from cifar_pipeline.config import PipelineConfig, parse_recipe  # noqa: E402
from cifar_pipeline.data.dataset import build_dataset, extract_archive  # noqa: E402
from cifar_pipeline.data.download import fetch_archive  # noqa: E402
from cifar_pipeline.evaluation import evaluate  # noqa: E402
from cifar_pipeline.models import build_model  # noqa: E402
from cifar_pipeline.training.budget import Measurement, epoch_cap, measure_steps, plan_epochs, training_seconds  # noqa: E402
from cifar_pipeline.training.cpu_tuning import busy_cores, capability_forced, detect_cpu  # noqa: E402
from cifar_pipeline.training.loop import train  # noqa: E402

TRAIN_IMAGES = 50_000
PARTS = ("seed", "floor", "cpu", "budget", "fixed", "frontier")
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


def parse_points(text: str) -> list[tuple[int, float, dict[str, str]]]:
    """ "64x16,64x27[cutout=8]" -> [(64, 16.0, {}), (64, 27.0, {"cutout": "8"})]"""
    points = []
    try:
        for part in re.split(r",(?![^\[]*\])", text):
            match = re.fullmatch(r"\s*(\d+)x([\d.]+)\s*(?:\[([^\]]*)\])?\s*", part)
            if match is None:
                raise ValueError(part)
            width, epochs, recipe = match.groups()
            points.append((int(width), float(epochs), parse_recipe(recipe or "")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"points are WIDTHxEPOCHS[FIELD=VALUE;...],...; got {text!r}") from None
    return points


def point_recipe(point: dict) -> str:
    """ "[cutout=8]": a frontier point's changed fields as `budget_frontier` writes them ('' for none)."""
    return f"[{';'.join(f'{k}={v}' for k, v in point['recipe'].items())}]" if point["recipe"] else ""


def seed_trial(archive: str, md5: str, torchvision_root: Path, work: Path, epochs: int, trial: int) -> dict:
    """One interleaved pair, each side its own process: the blog's script, then the pipeline's CLI on a
    fresh output folder (download, decoding, training, evaluation, report and promotion included)."""
    blog = blog_script(torchvision_root, epochs, trial)
    run, summary = pipeline_run("--preset", "seed", "--epochs", str(epochs), "--seed", str(trial),
                                "--source", archive, "--md5", md5, "--output-dir", str(work / f"seed-{trial}"))
    record = training_record(summary)
    return {"blog_seconds": blog["wall_seconds"], "blog_accuracy": blog["test_accuracy"],
            "blog_images_per_second": blog["images_per_second"],
            "pipeline_seconds": run.wall, "pipeline_accuracy": summary["test_accuracy"],
            "pipeline_flow_seconds": summary["seconds"], "pipeline_task_seconds": summary.get("task_seconds", {}),
            "pipeline_images_per_second": [e["images_per_second"] for e in record["epochs"]],
            "pipeline_precision": record["precision"]}


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


def budget_plans(dataset, widths: list[int | None], **overrides) -> list[dict]:
    """The `cpu` preset's budget plan per width, from the same warm-up measurement the flow runs."""
    plans = []
    for width in widths:
        cfg = PipelineConfig(preset="cpu", **({"width": width} if width else {}), **overrides).resolved({})
        speed = measure_steps(cfg, dataset)
        measured = Measurement.taken(speed, "", cfg)
        planned = plan_epochs(cfg.time_budget_min, epoch_cap(cfg),
                              lambda e: training_seconds(measured, e, speed.steps_per_epoch))
        plans.append({"width": cfg.width, "seconds_per_epoch": speed.seconds_per_step * speed.steps_per_epoch,
                      "seconds_per_epoch_early": speed.seconds_per_step_early * speed.steps_per_epoch,
                      "timed_steps": speed.timed_steps, "budget_min": cfg.time_budget_min,
                      "configured_epochs": cfg.epochs, "max_epochs": epoch_cap(cfg), "planned_epochs": planned,
                      "predicted_seconds": training_seconds(measured, planned, speed.steps_per_epoch)})
    return plans


def frontier_point(archive: str, md5: str, output: Path, width: int, epochs: float, seed: int,
                   extra: tuple[str, ...] = (), recipe: dict[str, str] | None = None) -> dict:
    """One (width, epochs) point of the `cpu` recipe, with `recipe`'s fields changed, at fixed epochs,
    trained as a user would."""
    recipe = recipe or {}
    changes = [arg for k, v in recipe.items() for arg in (f"--{k.replace('_', '-')}", v)]
    run, summary = pipeline_run("--preset", "cpu", "--time-budget-min", "0", "--width", str(width),
                                "--epochs", f"{epochs:g}", "--seed", str(seed), "--source", archive, "--md5", md5,
                                "--output-dir", str(output), *changes, *extra)
    record = training_record(summary)
    late = [e["seconds"] for e in record["epochs"][3:]] or [e["seconds"] for e in record["epochs"]]
    return {"width": width, "epochs": epochs, "recipe": recipe, "seed": seed, "test_accuracy": summary["test_accuracy"],
            "train_minutes": (record.get("wall_seconds") or record["train_seconds"]) / 60,
            "seconds_per_epoch_after_3": statistics.median(late), "cached": summary["tasks"].get("train") == "Cached",
            "wall_seconds": run.wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", required=True)
    parser.add_argument("--md5", required=True)
    parser.add_argument("--trials", type=int, default=1, help="interleaved pairs of the seed part")
    parser.add_argument("--seed-epochs", type=int, default=2, help="epochs of each side of the seed part "
                                                                   "(10: the blog's recipe, what `make run` trains)")
    parser.add_argument("--parts", type=parse_parts, default=["seed", "floor", "budget", "fixed"],
                        help="comma-separated: " + ",".join(PARTS))
    parser.add_argument("--budget-widths", default="", help="widths for the budget part, e.g. 48,64")
    parser.add_argument("--points", type=parse_points, default=[(64, 16)], help="frontier: WIDTHxEPOCHS,...")
    parser.add_argument("--seeds", default="0", help="frontier: seeds, e.g. 0,1")
    parser.add_argument("--frontier-output", default="outputs/frontier",
                        help="frontier: the output folder (its cache keeps every point trained)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    parts = args.parts
    results: dict = {"machine": machine_header(), "parts": parts}
    m = results["machine"]
    print(f"CPU: {m['cpu_model']}; torch capability {m['cpu_capability']}"
          f"{' (emulated: ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA set)' if m['emulated'] else ''}; "
          f"class {m['cpu_class']}; native bf16 {'yes' if m['native_bf16'] else 'no'}; {m['threads']} threads; "
          f"other work busy on {m['busy_cores_at_start']} cores; torch {m['torch']}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="cifar-bench-"))
    rows = [("CPU class / capability / threads", f"{m['cpu_class']} / {m['cpu_capability']}"
             f"{' (emulated)' if m['emulated'] else ''} / {m['threads']}")]
    dataset = None
    if {"seed", "cpu", "budget"} & set(parts):
        archive = fetch_archive([args.archive], args.md5, work)
        dataset = build_dataset(archive, work)
        root = work / "torchvision"
        extract_archive(archive.path, root)  # torchvision reads root/cifar-10-batches-py/

    if "seed" in parts:
        trials = []
        for trial in range(args.trials):
            trials.append(seed_trial(args.archive, args.md5, root, work, args.seed_epochs, trial))
            t = trials[-1]
            print(f"seed trial {trial}: blog script {t['blog_seconds']:.0f} s ({t['blog_accuracy']:.2%}, "
                  f"{statistics.median(t['blog_images_per_second']):.0f} img/s), pipeline CLI "
                  f"{t['pipeline_seconds']:.0f} s ({t['pipeline_accuracy']:.2%}, "
                  f"{statistics.median(t['pipeline_images_per_second']):.0f} img/s)", flush=True)
        blog_ips = statistics.median(x for t in trials for x in t["blog_images_per_second"])
        pipe_ips = statistics.median(x for t in trials for x in t["pipeline_images_per_second"])
        blog = statistics.median(t["blog_seconds"] for t in trials)
        pipe = statistics.median(t["pipeline_seconds"] for t in trials)
        results["seed"] = {"epochs": args.seed_epochs, "trials": trials, "median_blog_images_per_second": blog_ips,
                           "median_pipeline_images_per_second": pipe_ips, "median_blog_seconds": blog,
                           "median_pipeline_seconds": pipe, "ratio_images_per_second": pipe_ips / blog_ips,
                           "ratio_end_to_end": blog / pipe}
        steps = trials[0]["pipeline_task_seconds"]
        rows += [
            ("blog's script, batch 16, own process (median over epochs)", f"{blog_ips:.0f} img/s"),
            (f"`cifar-pipeline run --preset seed`, own process, {trials[0]['pipeline_precision']}",
             f"{pipe_ips:.0f} img/s"),
            ("ratio, images/s over full epochs", f"**{pipe_ips / blog_ips:.2f}x**"),
            (f"end to end, {args.seed_epochs} epochs: blog script / pipeline CLI (wall)", f"{blog:.0f} s / {pipe:.0f} s"),
            ("ratio end to end (blog wall / pipeline wall)", f"**{blog / pipe:.2f}x**"),
            ("accuracy: blog script / pipeline", f"{trials[0]['blog_accuracy']:.2%} / {trials[0]['pipeline_accuracy']:.2%}"),
            ("pipeline flow steps (first trial)", ", ".join(f"{k} {v:.1f} s" for k, v in steps.items())),
        ]

    if "floor" in parts:
        fwd, fwd_bwd = seed_net_flops_per_image()
        peak = statistics.median(matmul_peak_gflops() for _ in range(3))
        floor_seconds = TRAIN_IMAGES * fwd_bwd / (peak * 1e9)
        results["floor"] = {"matmul_peak_gflops": peak, "floor_epoch_seconds": floor_seconds,
                            "seed_net_mflop_per_image": {"forward": fwd / 1e6, "forward_backward": fwd_bwd / 1e6}}
        rows += [("fp32 matmul peak (2048^3, median)", f"{peak:.0f} GFLOP/s"),
                 ("Net FLOPs per image, forward / forward+backward", f"{fwd / 1e6:.2f} / {fwd_bwd / 1e6:.2f} MFLOP")]
        if "seed" in results:
            epoch_seconds = TRAIN_IMAGES / results["seed"]["median_pipeline_images_per_second"]
            rows.append(("seed epoch: pipeline / fp32 FLOP floor",
                         f"{epoch_seconds:.1f} s / {floor_seconds:.1f} s (floor = {floor_seconds / epoch_seconds:.0%})"))

    # the cpu preset, full length, on the real archive (its time budget is the flow's; here the 16 epochs)
    if "cpu" in parts:
        cfg = PipelineConfig(preset="cpu").resolved({})
        start = time.perf_counter()
        trained = train(cfg, dataset, work / "cpu-preset", progress=False)
        wall = time.perf_counter() - start
        evaluated = evaluate(cfg, trained, dataset, work / "cpu-preset")
        c = results["cpu"] = {
            "test_accuracy": evaluated.accuracy, "train_seconds": trained.train_seconds, "train_wall_seconds": wall,
            "eval_seconds": evaluated.seconds, "epochs": [e.model_dump() for e in trained.epochs],
            "precision": trained.precision,
        }
        rows += [("`cpu` preset test accuracy", f"**{c['test_accuracy']:.2%}**"),
                 ("`cpu` preset training time", f"{c['train_seconds'] / 60:.1f} min (wall {wall / 60:.1f} min), "
                                                f"{c['precision']}")]

    if "budget" in parts:
        widths = [int(w) for w in args.budget_widths.split(",") if w.strip()] or [None]
        results["budget"] = budget_plans(dataset, widths)
        for p in results["budget"]:
            rows.append((f"`cpu` preset, width {p['width']}: warm-up ({p['timed_steps']} steps) and plan",
                         f"{p['seconds_per_epoch_early']:.1f} s/epoch while the whitening bias trains, "
                         f"{p['seconds_per_epoch']:.1f} after: {p['planned_epochs']:g} epochs (at most "
                         f"{p['max_epochs']:g}) in a predicted {p['predicted_seconds'] / 60:.1f} of {p['budget_min']:g} min"))

    if "fixed" in parts:
        results["fixed"] = fixed_cost.fixed_costs(args.archive, args.md5, work)
        rows += fixed_cost.rows(results["fixed"])

    if "frontier" in parts:
        points = [frontier_point(args.archive, args.md5, Path(args.frontier_output), w, e, int(seed), recipe=r)
                  for w, e, r in args.points for seed in args.seeds.split(",")]
        results["frontier"] = points
        for p in points:
            rows.append((f"frontier: width {p['width']} x {p['epochs']:g} epochs{point_recipe(p)}, seed {p['seed']}"
                         f"{' (cached)' if p['cached'] else ''}",
                         f"{p['test_accuracy']:.2%}; training {p['train_minutes']:.1f} min, "
                         f"{p['seconds_per_epoch_after_3']:.1f} s/epoch after epoch 3"))
        rows.append(("budget_frontier entries", " ".join(
            f"{p['width']}x{p['epochs']:g}{point_recipe(p)}={100 * p['test_accuracy']:.2f}" for p in points)))

    print("\n| measurement | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
