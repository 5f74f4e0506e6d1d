"""The in-process batch sweep: every runner at every batch size, timed in alternation."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gendeploy.bench.results import CellResult
from gendeploy.bench.timing import Clock, Measurement, StabilityRule, measure_alternating
from gendeploy.errors import GendeployError
from gendeploy.runtime.base import Feeds, Runner

Log = Callable[[str], None]
# A reduced-precision runner whose output equals FP32 this closely did not compute in it.
SAME_AS_FP32 = 1e-6


def make_feeds(batch: int, latent_dim: int, num_classes: int, seed: int = 0) -> Feeds:
    rng = np.random.default_rng(seed)
    feeds: Feeds = {"z": rng.standard_normal((batch, latent_dim), dtype=np.float32)}
    if num_classes:
        feeds["labels"] = (np.arange(batch) % num_classes).astype(np.int64)
    return feeds


def peak_rss_mib(fn: Callable[[], object], calls: int = 2) -> float:
    """Resident-memory high-water mark of this process across ``calls`` calls of ``fn`` (Linux:
    reset through ``/proc/self/clear_refs``); 0.0 where the kernel does not offer it."""
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return 0.0
    for _ in range(calls):
        fn()
    found = re.search(r"VmHWM:\s+(\d+)\s+kB", status.read_text())
    return round(int(found.group(1)) / 1024, 1) if found else 0.0


def sweep_batch(
    runners: dict[str, Runner],
    batch: int,
    latent_dim: int,
    num_classes: int,
    flops_per_image: int,
    rule: StabilityRule,
    clock: Clock = time.perf_counter,
    log: Log | None = None,
    failed: dict[str, str] | None = None,
) -> list[CellResult]:
    """Time every runner at ``batch`` in alternation; ``runners`` must include ``eager``.

    With ``failed``, a runner whose first call raises is removed from ``runners`` and its reason
    recorded there, instead of ending the bench."""
    if log:
        log(f"  batch {batch}: checking outputs against eager, warming up (torch.compile compiles)")
    feeds = make_feeds(batch, latent_dim, num_classes)
    reference = runners["eager"].run(feeds)
    diffs, memory = {}, {}
    for name, runner in list(runners.items()):
        try:
            out = runner.run(feeds)  # also compiles torch.compile's graph for this batch size
        except Exception as e:  # a backend that builds but cannot run here: skip it, say why
            if failed is None or name == "eager":
                raise
            failed[name] = f"failed at batch {batch}: {type(e).__name__}: {str(e).strip()[:200]}"
            runners.pop(name).close()
            continue
        diffs[name] = float(np.max(np.abs(out.astype(np.float64) - reference)))
        if name != "eager" and runner.precision != "fp32" and diffs[name] <= SAME_AS_FP32:
            reason = (
                f"labelled {runner.precision} but its output equals eager FP32 within "
                f"{SAME_AS_FP32:g} at batch {batch} (max |diff| {diffs[name]:.2g}): it did not "
                f"compute in {runner.precision}"
            )
            if failed is None:
                raise GendeployError(f"{name}: {reason}")
            failed[name] = reason
            runners.pop(name).close()
            continue
        memory[name] = peak_rss_mib(lambda r=runner: r.run(feeds))  # type: ignore[misc]
    fns = {name: (lambda r=runner: r.run(feeds)) for name, runner in runners.items()}
    results = measure_alternating(fns, rule, clock)
    eager_ips = batch * results["eager"].calls_per_s
    cells = []
    for name, m in results.items():
        precision = runners[name].precision
        cells.append(_cell(name, precision, batch, m, flops_per_image, eager_ips, diffs, memory))
        if log:
            c = cells[-1]
            log(
                f"  {name:<18} batch {batch:>4}: {c.images_per_s:9.1f} img/s"
                f"  p50 {c.p50_ms:8.3f} ms  x{c.speedup:.2f}{'' if c.stable else '  (not stable)'}"
            )
    return cells


def _cell(
    name: str,
    precision: str,
    batch: int,
    m: Measurement,
    flops_per_image: int,
    eager_ips: float,
    diffs: dict[str, float],
    memory: dict[str, float],
) -> CellResult:
    ips = batch * m.calls_per_s
    gflops = ips * flops_per_image / 1e9
    return CellResult(
        runner=name,
        precision=precision,
        batch=batch,
        **m.latency_fields(),
        images_per_s=round(ips, 2),
        gflops=round(gflops, 2),
        speedup=round(ips / eager_ips, 3) if eager_ips else 0.0,
        max_abs_diff=float(f"{diffs[name]:.3g}"),
        peak_rss_mib=memory[name],
        stable=m.stable,
        windows=m.windows_run,
        calls=len(m.latencies_s),
    )
