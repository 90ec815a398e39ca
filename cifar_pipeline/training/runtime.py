"""The device a run uses, and process settings that make CPU training faster."""

from __future__ import annotations

import ctypes
import platform
import sys
from contextlib import AbstractContextManager, nullcontext
from functools import cache

import torch

from ..errors import ConfigError

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA device is available (use auto or cpu)")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


@cache
def tune_cpu_allocator() -> bool:
    """Keep freed tensor memory in the heap instead of returning it to the OS.

    glibc hands blocks over 128 kB back to the kernel on free and page-faults them in again on the
    next allocation. A CPU training step frees and re-allocates every gradient and activation, so
    at batch 16 that churn cost about 15 % of the step time here. Linux/glibc only; a no-op elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (x86 AVX512-BF16/AMX, Arm BF16) and
    torch's kernels may use them (not with ATEN_CPU_CAPABILITY forced down to avx2)."""
    from .cpu_tuning import detect_cpu

    return detect_cpu().native_bf16


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for a precision setting, or None for plain fp32.

    bf16 runs on CUDA, and on CPUs with native bf16 instructions (1.35x faster for the seed Net,
    1.5-1.7x for airnet on this project's AVX512-BF16 machines); a CPU without them would emulate
    bf16 slowly, so it runs fp32. fp16 is CUDA-only for the same reason.
    """
    if precision == "bf16" and (device.type == "cuda" or cpu_has_native_bf16()):
        return torch.bfloat16
    if precision == "fp16" and device.type == "cuda":
        return torch.float16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to `dtype` (from autocast_dtype) on this device, or nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
