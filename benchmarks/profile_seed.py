"""Where a seed-Net training step's time goes, and how its options compare (batch 16, synthetic data).

    python benchmarks/profile_seed.py profile [--steps 50] [--contiguous]   # torch.profiler table by op
    python benchmarks/profile_seed.py compare [--steps 40] [--rounds 3]     # options interleaved in one process
    python benchmarks/profile_seed.py layers                                # each conv: layout x kernel, fwd+bwd

`compare` times channels_last against contiguous, 2 threads against 1, oneDNN off, and bf16 autocast
where native, round-robin so that machine noise hits each alike. Prefix ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 to emulate an AVX2 CPU; OMP_WAIT_POLICY=PASSIVE to see the OpenMP wait policy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_pipeline.models import build_model  # noqa: E402
from cifar_pipeline.training.cpu_tuning import capability_forced, detect_cpu  # noqa: E402
from cifar_pipeline.training.runtime import tune_cpu_allocator  # noqa: E402

BATCH = 16


def make_trial(steps: int, channels_last: bool = True, threads: int | None = None, mkldnn: bool = True,
               bf16: bool = False):
    torch.manual_seed(0)
    model = build_model("seed_net")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, foreach=False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xs = [torch.rand(BATCH, 3, 32, 32).contiguous(memory_format=fmt) for _ in range(steps)]
    ys = [torch.randint(0, 10, (BATCH,)) for _ in range(steps)]
    default_threads = torch.get_num_threads()

    def trial() -> float:
        torch.set_num_threads(threads or default_threads)
        torch.backends.mkldnn.enabled = mkldnn
        start = time.perf_counter()
        try:
            for x, y in zip(xs, ys):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss.item()
            return steps * BATCH / (time.perf_counter() - start)
        finally:
            torch.backends.mkldnn.enabled = True
            torch.set_num_threads(default_threads)

    return trial


def make_halves_trial(steps: int):
    """The same SGD step, parallel across cores instead of within ops: each core computes the gradient
    of half the batch on one thread (no OpenMP barrier per op), the halves are summed (same update)."""
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(0)
    model = build_model("seed_net").to(memory_format=torch.channels_last)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, foreach=False)
    xs = [torch.rand(BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last) for _ in range(steps)]
    ys = [torch.randint(0, 10, (BATCH,)) for _ in range(steps)]
    pool = ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,))
    default_threads = torch.get_num_threads()
    half = BATCH // 2

    def grads(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum") / BATCH, params)

    def trial() -> float:
        torch.set_num_threads(1)
        start = time.perf_counter()
        try:
            for x, y in zip(xs, ys):
                other = pool.submit(grads, x[:half], y[:half])
                mine = grads(x[half:], y[half:])
                for p, a, b in zip(params, other.result(), mine):
                    p.grad = a.add_(b)
                optimizer.step()
            return steps * BATCH / (time.perf_counter() - start)
        finally:
            torch.set_num_threads(default_threads)

    return trial


def compare(steps: int, rounds: int) -> None:
    cpu = detect_cpu()
    options = {
        "channels_last": make_trial(steps),
        "contiguous": make_trial(steps, channels_last=False),
        "channels_last, 1 thread": make_trial(steps, threads=1),
        "channels_last, oneDNN off": make_trial(steps, mkldnn=False),
        "2 cores x half batch, 1 thread each": make_halves_trial(steps),
    }
    if cpu.native_bf16:
        options["channels_last, bf16 autocast"] = make_trial(steps, bf16=True)
    for trial in options.values():
        trial()  # warm-up: kernel selection, allocations
    results: dict[str, list[float]] = {name: [] for name in options}
    for _ in range(rounds):
        for name, trial in options.items():
            results[name].append(trial())
    for name, values in results.items():
        print(f"{name:32} median {statistics.median(values):7.0f} img/s  ({', '.join(f'{v:.0f}' for v in values)})")


def layers(rounds: int) -> None:
    """Forward + backward of each of the Net's convs alone, batch 16: is one layout or kernel better per layer?"""
    shapes = [(3, 10, 32), (10, 20, 28), (20, 20, 24), (20, 10, 20)]  # (in, out, input size), 5x5 each

    def make(cin: int, cout: int, size: int, fmt: torch.memory_format, mkldnn: bool, input_grad: bool):
        conv = torch.nn.Conv2d(cin, cout, 5).to(memory_format=fmt)
        x = torch.rand(BATCH, cin, size, size).contiguous(memory_format=fmt).requires_grad_(input_grad)

        def trial(n: int = 30) -> float:
            torch.backends.mkldnn.enabled = mkldnn
            start = time.perf_counter()
            for _ in range(n):
                y = conv(x)
                y.backward(torch.ones_like(y))
            torch.backends.mkldnn.enabled = True
            return 1e3 * (time.perf_counter() - start) / n

        return trial

    for i, (cin, cout, size) in enumerate(shapes):
        options = {f"{name}{'' if mkldnn else ', oneDNN off'}": make(cin, cout, size, fmt, mkldnn, i > 0)
                   for name, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format))
                   for mkldnn in (True, False)}
        for trial in options.values():
            trial(5)
        results: dict[str, list[float]] = {name: [] for name in options}
        for _ in range(rounds):
            for name, trial in options.items():
                results[name].append(trial())
        print(f"conv{i + 1} {cin}->{cout} at {size}x{size}: " +
              "; ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in results.items()), flush=True)


def profile(steps: int, channels_last: bool) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    trial = make_trial(steps, channels_last=channels_last)
    trial()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        trial()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["profile", "compare", "layers"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--contiguous", action="store_true")
    args = parser.parse_args()
    tune_cpu_allocator()
    cpu = detect_cpu()
    print(f"CPU: {cpu.model}; capability {cpu.capability}{' (emulated)' if capability_forced() else ''}; "
          f"class {cpu.cpu_class}; native bf16 {cpu.native_bf16}; {cpu.threads} threads", flush=True)
    if args.mode == "profile":
        profile(args.steps or 50, not args.contiguous)
    elif args.mode == "layers":
        layers(args.rounds)
    else:
        compare(args.steps or 40, args.rounds)


if __name__ == "__main__":
    main()
