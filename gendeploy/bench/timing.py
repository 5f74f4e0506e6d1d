"""Timing with perf_analyzer's stability rule and an injectable clock.

A cell (one runner at one batch size) is timed in windows of ``window_s`` seconds. After a warm-up,
windows are added until the last ``windows`` of them agree within ``tolerance`` (each window's
throughput and mean latency within 10% of the average over those windows, as perf_analyzer's
``--stability-percentage`` does), or until ``max_windows`` is reached, in which case the cell is
reported as not stable. :func:`measure_alternating` gives each unfinished cell one window per round,
so drift on the machine hits every runner alike. The clock is a plain ``() -> seconds`` callable so
tests can drive the rule with a deterministic fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

Clock = Callable[[], float]


@dataclass(frozen=True)
class StabilityRule:
    window_s: float = 0.5
    windows: int = 3  # consecutive windows that must agree
    tolerance: float = 0.10  # fraction of the windows' average
    max_windows: int = 12  # cap: a cell that never settles is reported as not stable
    min_calls: int = 2  # per window, however long the calls are
    warmup_calls: int = 2

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.windows < 1 or self.max_windows < self.windows:
            raise ValueError("need window_s > 0 and 1 <= windows <= max_windows")
        if not 0 < self.tolerance < 1 or self.min_calls < 1 or self.warmup_calls < 0:
            raise ValueError("need 0 < tolerance < 1, min_calls >= 1, warmup_calls >= 0")


@dataclass(frozen=True)
class Window:
    latencies_s: tuple[float, ...]
    elapsed_s: float

    @property
    def calls_per_s(self) -> float:
        return len(self.latencies_s) / self.elapsed_s if self.elapsed_s > 0 else float("inf")

    @property
    def mean_latency_s(self) -> float:
        return float(np.mean(self.latencies_s))


def windows_agree(windows: list[Window], rule: StabilityRule) -> bool:
    """True when the last ``rule.windows`` windows agree within ``rule.tolerance``."""
    if len(windows) < rule.windows:
        return False
    last = windows[-rule.windows :]
    for values in ([w.calls_per_s for w in last], [w.mean_latency_s for w in last]):
        mean = float(np.mean(values))
        if not np.isfinite(mean) or any(abs(v - mean) > rule.tolerance * mean for v in values):
            return False
    return True


@dataclass
class Measurement:
    """The windows that count (the last ``rule.windows``), and whether they agreed."""

    stable: bool
    windows_run: int
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def calls_per_s(self) -> float:
        return len(self.latencies_s) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1e3)

    def latency_fields(self) -> LatencyFields:
        """p50/p90/p99/mean in ms, as every report row carries them."""
        return LatencyFields(
            p50_ms=round(self.percentile_ms(50), 4),
            p90_ms=round(self.percentile_ms(90), 4),
            p99_ms=round(self.percentile_ms(99), 4),
            mean_ms=round(float(np.mean(self.latencies_s)) * 1e3, 4),
        )


class LatencyFields(TypedDict):
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float


class Cell:
    """One function under measurement: warm-up, then windows until stable or capped."""

    def __init__(self, fn: Callable[[], object], rule: StabilityRule, clock: Clock) -> None:
        self.fn, self.rule, self.clock = fn, rule, clock
        self.windows: list[Window] = []
        self.warm = False

    @property
    def done(self) -> bool:
        return windows_agree(self.windows, self.rule) or len(self.windows) >= self.rule.max_windows

    def step(self) -> None:
        """Warm up (first time only), then run one window."""
        if not self.warm:
            for _ in range(self.rule.warmup_calls):
                self.fn()
            self.warm = True
        latencies: list[float] = []
        start = now = self.clock()
        while now - start < self.rule.window_s or len(latencies) < self.rule.min_calls:
            before = now
            self.fn()
            now = self.clock()
            latencies.append(now - before)
        self.windows.append(Window(tuple(latencies), now - start))

    def result(self) -> Measurement:
        return summarize(self.windows, self.rule)


def summarize(windows: list[Window], rule: StabilityRule) -> Measurement:
    """The measurement from the last ``rule.windows`` windows."""
    last = windows[-rule.windows :]
    return Measurement(
        stable=windows_agree(windows, rule),
        windows_run=len(windows),
        latencies_s=[x for w in last for x in w.latencies_s],
        elapsed_s=sum(w.elapsed_s for w in last),
    )


def measure(
    fn: Callable[[], object], rule: StabilityRule, clock: Clock = time.perf_counter
) -> Measurement:
    cell = Cell(fn, rule, clock)
    while not cell.done:
        cell.step()
    return cell.result()


def measure_alternating(
    fns: Mapping[str, Callable[[], object]],
    rule: StabilityRule,
    clock: Clock = time.perf_counter,
    on_window: Callable[[str], None] | None = None,
) -> dict[str, Measurement]:
    """Round-robin: each unfinished cell gets one window per round until all are done."""
    cells = {name: Cell(fn, rule, clock) for name, fn in fns.items()}
    while not all(c.done for c in cells.values()):
        for name, cell in cells.items():
            if not cell.done:
                cell.step()
                if on_window is not None:
                    on_window(name)
    return {name: cell.result() for name, cell in cells.items()}
