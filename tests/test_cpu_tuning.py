"""The per-machine choice, with the CPU injected: no timing, no dependence on this machine; and the load
window read against real work (this process spinning, then a child process spinning), with wide margins."""

import subprocess
import sys
import time

import torch

from cifar_pipeline.training.cpu_tuning import (
    BusyWindow, CpuInfo, busy_cores, capability_forced, choose_cpu_settings, detect_cpu,
)
from cifar_pipeline.training.runtime import autocast_dtype

XEON_BF16 = CpuInfo("Intel(R) Xeon(R) Processor", "AVX512", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}), 2)
SKYLAKE = CpuInfo("Intel(R) Xeon(R) Gold 6148", "AVX512", frozenset({"avx2", "avx512f"}), 4)
EPYC_AVX2 = CpuInfo("AMD EPYC 7B12", "AVX2", frozenset({"avx2", "fma"}), 2)
# An AVX-512 BF16 CPU run with ATEN_CPU_CAPABILITY=avx2: the flags are there, the kernels are AVX2.
EMULATED_AVX2 = CpuInfo("Intel(R) Xeon(R) Processor", "AVX2", XEON_BF16.flags, 2)
GRAVITON3 = CpuInfo("aarch64", "SVE256", frozenset({"asimd", "sve", "bf16"}), 2)


def test_cpu_classes():
    assert XEON_BF16.cpu_class == "AVX-512 BF16"
    assert SKYLAKE.cpu_class == "AVX-512"
    assert EPYC_AVX2.cpu_class == "AVX2"
    assert EMULATED_AVX2.cpu_class == "AVX2"
    assert [c.native_bf16 for c in (XEON_BF16, SKYLAKE, EPYC_AVX2, EMULATED_AVX2, GRAVITON3)] == \
        [True, False, False, False, True]


def test_bf16_runs_only_where_it_is_native():
    assert choose_cpu_settings(XEON_BF16, "bf16", True, "seed_net").precision == "bf16"
    for cpu in (SKYLAKE, EPYC_AVX2, EMULATED_AVX2):
        chosen = choose_cpu_settings(cpu, "bf16", True, "seed_net")
        assert chosen.precision == "fp32"
        assert "no native bf16" in chosen.reasons[0] and cpu.cpu_class in chosen.reasons[0]
    assert choose_cpu_settings(EPYC_AVX2, "fp32", True, "airnet").reasons == []
    assert choose_cpu_settings(XEON_BF16, "fp16", True, "airnet").precision == "fp32"


def test_the_choice_names_the_machine_and_keeps_layout_and_kernels():
    chosen = choose_cpu_settings(EPYC_AVX2, "fp32", False, "seed_net", emulated=True)
    assert chosen.cpu == EPYC_AVX2.key() and "AMD EPYC 7B12" in chosen.cpu and "AVX2" in chosen.cpu
    assert chosen.channels_last is False and chosen.mkldnn and chosen.emulated
    assert EPYC_AVX2.key() != EMULATED_AVX2.key() != XEON_BF16.key()


def test_forced_capability_is_seen_from_the_environment():
    assert capability_forced({"ATEN_CPU_CAPABILITY": "avx2"})
    assert capability_forced({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not capability_forced({})


def test_detection_and_autocast_agree_on_this_machine():
    info = detect_cpu()
    assert info.capability == torch.backends.cpu.get_cpu_capability() and info.threads >= 1
    expected = torch.bfloat16 if info.native_bf16 else None
    assert autocast_dtype(torch.device("cpu"), "bf16") == expected


def test_busy_cores_are_left_to_the_work_that_holds_them():
    quiet = choose_cpu_settings(EPYC_AVX2, "fp32", True, "seed_net", busy_cores=0.2)
    assert quiet.threads == 2 and quiet.reasons == []
    shared = choose_cpu_settings(EPYC_AVX2, "fp32", True, "seed_net", busy_cores=0.9)
    assert shared.threads == 1 and "0.9 cores busy: 1 of 2 threads" in shared.reasons[0]
    assert choose_cpu_settings(EPYC_AVX2, "fp32", True, "seed_net", busy_cores=9.0).threads == 1
    eight = CpuInfo("AMD EPYC 7B13", "AVX2", frozenset({"avx2"}), 8)
    assert choose_cpu_settings(eight, "fp32", True, "airnet", busy_cores=2.1).threads == 6
    assert 0.0 <= busy_cores(0.05) <= (__import__("os").cpu_count() or 1)


def test_the_load_window_counts_other_processes_not_this_ones_own_work():
    window = BusyWindow()
    end = time.perf_counter() + 0.6
    while time.perf_counter() < end:  # this process working through the window: not other work
        pass
    own = window.cores()
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)  # the interpreter's start
        other = BusyWindow().cores(0.8)
    finally:
        spinner.kill()
        spinner.wait()
    assert own < 0.6, own
    assert other > 0.6, other
