"""This machine's matmul peak, measured in the same run as the engines it is compared with."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from gendeploy.bench.timing import Clock, StabilityRule, measure


@dataclass(frozen=True)
class Peak:
    dtype: str
    size: int
    gflops: float  # the best window's rate
    stable: bool


def matmul_peak(
    dtype: torch.dtype = torch.float32,
    size: int = 2048,
    rule: StabilityRule | None = None,
    clock: Clock = time.perf_counter,
) -> Peak:
    """GFLOP/s of a square ``size`` matmul with torch's current thread count (best window)."""
    rule = rule or StabilityRule(window_s=0.3, max_windows=8)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    result = measure(lambda: torch.mm(a, b, out=out), rule, clock)
    best_s = min(result.latencies_s)
    return Peak(str(dtype).removeprefix("torch."), size, 2 * size**3 / best_s / 1e9, result.stable)


def bf16_supported() -> bool:
    """bf16 matmuls have hardware support here (a CUDA GPU, or avx512_bf16 / AMX on the CPU)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
