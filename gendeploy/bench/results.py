"""What the bench measures, one record per runner and batch (``CellResult``) or per served
concurrency level (``ServedResult``): shared by the sweeps that make them and the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CellResult:
    """One runner at one batch size: the row of the report."""

    runner: str
    precision: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    gflops: float  # achieved, from the counted FLOPs
    peak_fraction: float  # of the FP32 matmul peak measured in this run (bf16 may pass 1.0)
    speedup: float  # over eager fp32 at the same batch, same run
    max_abs_diff: float  # against eager fp32 on the same inputs
    peak_rss_mib: float  # process high-water mark while this runner ran (weights of all included)
    stable: bool
    windows: int
    calls: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ServedResult:
    protocol: str
    concurrency: int
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    stable: bool
    tool: str  # "perf_analyzer" or "tritonclient load loop"
    note: str = ""
    breakdown_ms: dict[str, float] = field(default_factory=dict)  # perf_analyzer's mean parts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
