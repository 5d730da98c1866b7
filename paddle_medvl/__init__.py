"""paddle_medvl: BLIP-2-style medical vision-language models on PaddlePaddle."""
from __future__ import annotations

import importlib.util
import os
import sys


def _paddle_installed() -> None:
    """Paddle is no hard requirement (pip would put the CPU wheel over a GPU or NPU one): say how to
    get it instead of failing later with "No module named 'paddle'". Looks without importing it."""
    if importlib.util.find_spec("paddle") is None:
        raise ImportError(
            "paddle_medvl needs PaddlePaddle, which is not installed: pip install -e \".[cpu]\" -c constraints.txt "
            "for the CPU wheel, or see the README's Devices section for GPU (paddlepaddle-gpu) and NPU (paddle-custom-npu)"
        )


_paddle_installed()


def _fast_mkl_on_amd() -> None:
    """Let Paddle's bundled MKL use its AVX2 kernels on AMD CPUs.

    MKL picks a slow generic path on non-Intel CPUs: float32 GEMM here ran at 51 GFLOP/s instead
    of 167, and a BLIP-2 train step took 3.35 s instead of 1.66 s (bench/model_step.py). MKL reads
    the variable at its first BLAS call, so importing paddle_medvl before any Paddle math is
    enough. Not on Intel CPUs (it would cap AVX-512 machines at AVX2), never over the user's value.
    """
    if "MKL_DEBUG_CPU_TYPE" in os.environ:
        return
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            amd = "AuthenticAMD" in f.read(4096)
    except OSError:
        return
    if amd:
        os.environ["MKL_DEBUG_CPU_TYPE"] = "5"


_fast_mkl_on_amd()


def _cpu_threads_default() -> None:
    """Give Paddle's CPU math the cores this process may use, unless the user chose a number.

    Paddle's import sets ``OMP_NUM_THREADS=1`` when it is unset, and its OpenMP kernels read the
    variable then; ``device.setup_device`` hands the same number to its MKL (whose own default is
    one thread). One number everywhere also keeps results bit-identical from run to run: with
    OpenMP on 1 and MKL on 2, a resumed run with loader workers drifted from a straight one. The demo
    trains at 58 samples/s on one thread, 80 on two. Nothing changes once Paddle is imported.
    """
    if "paddle" in sys.modules or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(cores)


_cpu_threads_default()

__version__ = "0.1.0"
