"""The stability rule on a deterministic fake clock: stops when stable, caps when not."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from gendeploy.bench.timing import (
    StabilityRule,
    Window,
    measure,
    measure_alternating,
    windows_agree,
)


class FakeClock:
    """Time advances only when the code under test 'runs' something."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, durations: Iterator[float]) -> Callable[[], None]:
        def fn() -> None:
            self.now += next(durations)

        return fn


def constant(seconds: float) -> Iterator[float]:
    while True:
        yield seconds


def alternating(fast: float, slow: float, per_phase: int) -> Iterator[float]:
    """``per_phase`` calls at ``fast``, then ``per_phase`` at ``slow``, forever."""
    while True:
        yield from [fast] * per_phase
        yield from [slow] * per_phase


RULE = StabilityRule(window_s=1.0, windows=3, tolerance=0.10, max_windows=8, warmup_calls=2)


def test_measure_stops_after_three_agreeing_windows_when_calls_are_steady() -> None:
    clock = FakeClock()
    m = measure(clock.work(constant(2**-7)), RULE, clock)  # exact in binary: 128 calls a window
    assert m.stable
    assert m.windows_run == 3
    assert m.calls_per_s == 128.0
    assert m.percentile_ms(50) == pytest.approx(1000 / 128)
    assert len(m.latencies_s) == 3 * 128


def test_measure_caps_at_max_windows_and_reports_unstable_when_speed_keeps_changing() -> None:
    clock = FakeClock()
    # one window fast, one window 2x slower, and so on: no 3 consecutive windows agree
    m = measure(clock.work(alternating(0.01, 0.02, per_phase=100)), RULE, clock)
    assert not m.stable
    assert m.windows_run == RULE.max_windows


def test_measure_becomes_stable_once_a_warm_up_drift_settles() -> None:
    clock = FakeClock()
    durations = iter([0.05] * 40 + [0.01] * 100_000)  # two slow windows, then steady
    m = measure(clock.work(durations), RULE, clock)
    assert m.stable
    assert 3 < m.windows_run < RULE.max_windows
    assert m.percentile_ms(99) == pytest.approx(10.0)  # only the agreeing windows count


def test_windows_within_ten_percent_agree_and_beyond_do_not() -> None:
    def window(latency: float) -> Window:
        return Window((latency,) * 10, latency * 10)

    assert windows_agree([window(1.0), window(1.05), window(0.96)], RULE)
    assert not windows_agree([window(1.0), window(1.25), window(1.0)], RULE)
    assert not windows_agree([window(1.0), window(1.0)], RULE)  # too few windows


def test_a_window_holds_at_least_min_calls_even_when_one_call_outlasts_it() -> None:
    clock = FakeClock()
    rule = StabilityRule(window_s=0.1, min_calls=2, max_windows=3, warmup_calls=0)
    m = measure(clock.work(constant(1.0)), rule, clock)
    assert len(m.latencies_s) == 6
    assert m.stable


def test_alternating_gives_each_unfinished_runner_one_window_per_round() -> None:
    clock = FakeClock()
    order: list[str] = []
    fns = {
        "steady": clock.work(constant(0.01)),
        "noisy": clock.work(alternating(0.01, 0.03, per_phase=50)),
    }
    results = measure_alternating(fns, RULE, clock, on_window=order.append)
    assert order[:6] == ["steady", "noisy"] * 3
    assert results["steady"].stable and results["steady"].windows_run == 3
    assert not results["noisy"].stable and results["noisy"].windows_run == RULE.max_windows
    assert order[6:] == ["noisy"] * (RULE.max_windows - 3)


def test_rule_rejects_settings_that_cannot_work() -> None:
    with pytest.raises(ValueError):
        StabilityRule(windows=5, max_windows=3)
    with pytest.raises(ValueError):
        StabilityRule(tolerance=0.0)
