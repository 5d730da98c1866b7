"""paddle_medvl: BLIP-2-style medical vision-language models on PaddlePaddle."""
from __future__ import annotations

import os
import sys


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

# The user's OMP_NUM_THREADS, read before Paddle's import writes "1" there when it is unset
# (device.cpu_threads decides the CPU's math threads from it). None: not set, or Paddle came first.
USER_OMP_NUM_THREADS: str | None = None if "paddle" in sys.modules else os.environ.get("OMP_NUM_THREADS")

__version__ = "0.1.0"
