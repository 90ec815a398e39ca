"""Per-machine CPU settings: what the CPU can do (detected once) and what a run uses on it (a pure choice).

The pipeline's speed figures differ by CPU class: an AVX-512 BF16 CPU runs bf16 autocast natively,
an AVX2 one has no bf16 instructions and would emulate it slowly. `detect_cpu()` reads the machine;
`choose_cpu_settings()` decides from what it is given, so the decision is tested with any CPU injected.
Run with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 to see an AVX-512 machine behave as an
AVX2 one: torch's capability then says AVX2, and bf16 counts as not native.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass
from functools import cache

from pydantic import BaseModel


@dataclass(frozen=True)
class CpuInfo:
    model: str  # "Intel(R) Xeon(R) Processor", "AMD EPYC 7B13", ...
    capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", "SVE256", ...
    flags: frozenset[str]
    threads: int

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware *and* kernels allowed to use them.

        A forced-down capability (ATEN_CPU_CAPABILITY=avx2) runs AVX2 kernels, which have no bf16
        instructions even where the CPU does.
        """
        if self.capability.startswith("AVX"):  # x86
            return self.capability.startswith("AVX512") and bool(self.flags & {"avx512_bf16", "amx_bf16"})
        return "bf16" in self.flags  # Arm: FEAT_BF16

    @property
    def cpu_class(self) -> str:
        """The class the benchmark tables are kept by."""
        if self.capability.startswith("AVX512"):
            return "AVX-512 BF16" if self.native_bf16 else "AVX-512"
        if self.capability == "AVX2":
            return "AVX2"
        return self.capability or "unknown"

    def key(self) -> str:
        """What a measured speed depends on: the same key, the same speed (within noise)."""
        return f"{self.model} | {self.capability} | bf16={self.native_bf16} | {self.threads} threads"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@cache
def detect_cpu() -> CpuInfo:
    import torch  # here, not at the top: records that name CpuSettings load without torch

    return CpuInfo(model=_cpu_model(), capability=torch.backends.cpu.get_cpu_capability(),
                   flags=_cpu_flags(), threads=torch.get_num_threads())


class CpuSettings(BaseModel):
    """What a CPU run uses on this machine, recorded in the TrainRecord and the report."""

    cpu_class: str
    cpu: str  # CpuInfo.key()
    precision: str  # what runs: "bf16" only with native bf16, else "fp32"
    channels_last: bool  # memory layout of the conv layers
    mkldnn: bool  # oneDNN kernels for conv/linear (False: ATen's native kernels)
    threads: int  # intra-op threads training uses
    busy_cores: float  # CPU other work kept busy just before training (measured, in cores)
    emulated: bool  # the capability was forced down by the environment (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA)
    reasons: list[str]


def capability_forced(environ: dict[str, str] | None = None) -> bool:
    environ = dict(os.environ) if environ is None else environ
    return bool(environ.get("ATEN_CPU_CAPABILITY") or environ.get("ONEDNN_MAX_CPU_ISA"))


def choose_cpu_settings(info: CpuInfo, precision: str, channels_last: bool, model: str,
                        emulated: bool = False, busy_cores: float = 0.0) -> CpuSettings:
    """The settings a run uses on `info`'s CPU, given what the config asks for and how busy the CPU is.

    Pure: everything it depends on is an argument. Measured (benchmarks/RESULTS.md, "Profiling"):
    - bf16 autocast pays only with native bf16; emulated, it is several times slower than fp32,
      so a bf16 config runs fp32 there (the same recipe, results within seed noise).
    - threads: torch's OpenMP threads wait for each other at every op; when other work holds a core,
      a thread loses its core mid-op and the whole step waits (seed Net, batch 16, 2 cores under
      load: 47 img/s with 2 threads against 733 with 1). So a run leaves busy cores to their work.
    - channels_last stays as configured (faster for the seed Net at batch 16, oneDNN's layout for
      airnet); oneDNN stays on (ATen's native convs were far slower in every case tried).
    """
    reasons = []
    run_precision = precision
    if precision == "bf16" and not info.native_bf16:
        run_precision = "fp32"
        reasons.append(f"bf16 requested but this CPU ({info.cpu_class}) has no native bf16: runs fp32")
    elif precision == "fp16":
        run_precision = "fp32"
        reasons.append("fp16 autocast is CUDA-only: runs fp32")
    threads = info.threads
    if busy_cores >= 0.5:
        threads = max(1, min(info.threads, info.threads - math.ceil(busy_cores - 0.25)))
        if threads < info.threads:
            reasons.append(f"other work kept {busy_cores:.1f} cores busy: {threads} of {info.threads} threads")
    return CpuSettings(cpu_class=info.cpu_class, cpu=info.key(), precision=run_precision,
                       channels_last=channels_last, mkldnn=True, threads=threads, busy_cores=round(busy_cores, 2),
                       emulated=emulated, reasons=reasons)


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat; None where it is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class BusyWindow:
    """Cores kept busy by other work from now until `cores()`: the machine's CPU time less this process's.

    Taking this process's own time out lets the window run while the process works (the training data
    loading, the model being built) instead of in a pause of its own before the first step. Other
    processes count, children included (Prefect's temporary server is one); this process's threads do
    not, so torch's OpenMP threads spinning after an op are not taken for other work."""

    def __init__(self) -> None:
        self._start, self._own, self._wall = _cpu_jiffies(), time.process_time(), time.perf_counter()

    def cores(self, min_seconds: float = 0.3) -> float:
        """The mean over the window, waited out to at least `min_seconds`; 0.0 without /proc/stat."""
        left = min_seconds - (time.perf_counter() - self._wall)
        if left > 0:
            time.sleep(left)
        end = _cpu_jiffies()
        if self._start is None or end is None or end[1] == self._start[1]:
            return 0.0
        own = (time.process_time() - self._own) * os.sysconf("SC_CLK_TCK")
        cores = os.cpu_count() or 1
        return cores * max(0.0, end[0] - self._start[0] - own) / (end[1] - self._start[1])


def busy_cores(seconds: float = 0.3) -> float:
    """Cores kept busy by other processes while the calling thread sleeps for `seconds`."""
    return BusyWindow().cores(seconds)


def current_cpu_settings(precision: str, channels_last: bool, model: str, load: float | None = None) -> CpuSettings:
    return choose_cpu_settings(detect_cpu(), precision, channels_last, model, emulated=capability_forced(),
                               busy_cores=busy_cores() if load is None else load)
