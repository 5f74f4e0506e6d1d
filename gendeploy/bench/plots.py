"""PNG plots of a bench report (matplotlib, Agg backend): throughput against batch per runner,
latency percentiles, served throughput against concurrency."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from gendeploy.bench.results import BenchReport, ModelReport, RunnerQuality
from gendeploy.fileio import atomic_write_bytes


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _runners(model: ModelReport) -> list[str]:
    return list(dict.fromkeys(c.runner for c in model.cells))


def throughput_plot(model: ModelReport, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in _runners(model):
        cells = sorted((c for c in model.cells if c.runner == r), key=lambda c: c.batch)
        style = "k--" if r == "eager" else "-"
        ax.plot(
            [c.batch for c in cells],
            [c.images_per_s for c in cells],
            style,
            marker="o",
            label=r,
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="images / s",
        title=f"{model.name}: throughput by runner",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def latency_plot(model: ModelReport, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    batches = sorted({c.batch for c in model.cells})
    runners = _runners(model)
    fig, axes = plt.subplots(1, len(batches), figsize=(3.2 * len(batches), 4), squeeze=False)
    for ax, b in zip(axes[0], batches, strict=True):
        by = {c.runner: c for c in model.cells if c.batch == b}
        x = np.arange(len(runners))
        for i, (q, color) in enumerate((("p50", "C0"), ("p90", "C1"), ("p99", "C3"))):
            vals = [getattr(by[r], f"{q}_ms") if r in by else 0.0 for r in runners]
            ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=q, color=color)
        ax.set_xticks(x, runners, rotation=60, ha="right", fontsize=7)
        ax.set(title=f"batch {b}", ylabel="latency ms" if b == batches[0] else "")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{model.name}: latency percentiles per call")
    return _save(fig, path)


def served_plot(model: ModelReport, path: Path, goal: float) -> Path | None:
    """Served throughput against concurrency; in-process batch 1 and the served goal beside."""
    import matplotlib.pyplot as plt

    results = model.served.results if model.served else []
    if not results:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for protocol in dict.fromkeys(r.protocol for r in results):
        rows = sorted((r for r in results if r.protocol == protocol), key=lambda r: r.concurrency)
        ax.plot(
            [r.concurrency for r in rows],
            [r.images_per_s for r in rows],
            marker="o",
            label=f"served, {protocol}",
        )
    for c in model.cells:
        if c.batch == 1 and c.runner in ("eager", "onnxruntime"):
            color = "k" if c.runner == "eager" else "g"
            label = f"in-process {c.runner}, batch 1"
            ax.axhline(c.images_per_s, ls="--", lw=1, color=color, label=label)
            if c.runner == "onnxruntime":  # the served goal: >= goal x this at concurrency 4
                ax.axhline(goal * c.images_per_s, ls=":", lw=1, color=color, label=f"goal: {goal}x")
    ax.set(
        xscale="log",
        xlabel="concurrent clients (batch 1 each)",
        ylabel="images / s",
        title=f"{model.name}: served throughput",
    )
    ax.set_xticks(sorted({r.concurrency for r in results}))
    ax.get_xaxis().set_major_formatter(plt.ScalarFormatter())
    ax.get_xaxis().set_minor_formatter(plt.NullFormatter())
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def quality_plot(model: ModelReport, path: Path) -> Path | None:
    """Speed against quality: images/s at the largest batch vs the gate's Frechet ratio."""
    import matplotlib.pyplot as plt

    quality = model.quality
    batch = max(c.batch for c in model.cells)
    cells = {c.runner: c for c in model.cells if c.batch == batch}
    judged = {n: q for n, q in quality.items() if isinstance(q, RunnerQuality)}
    ratios = [("eager", 1.0, True), *((n, q.frechet_ratio, q.passed) for n, q in judged.items())]
    points = [
        (name, cells[name].images_per_s, ratio, passed, cells[name].precision)
        for name, ratio, passed in ratios
        if name in cells
    ]
    if len(points) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, ips, ratio, passed, precision) in enumerate(sorted(points, key=lambda p: p[1])):
        ax.scatter(ips, ratio, marker="o" if passed else "x", s=50, color="C0" if passed else "C3")
        # alternate labels above and below: runners of similar speed and quality sit close
        ax.annotate(f"{name} ({precision})", (ips, ratio), fontsize=7,
                    xytext=(4, 6 if i % 2 == 0 else -12), textcoords="offset points")  # fmt: skip
    limit = next((q.max_frechet_ratio for q in judged.values()), None)
    if limit is not None:
        ax.axhline(limit, ls=":", color="C3", lw=1, label=f"quality gate: Frechet ratio <= {limit}")
    ax.axhline(1.0, ls="--", color="k", lw=0.8, label="FP32's own noise floor (1.0)")
    ax.set(
        xscale="log",
        xlabel=f"images / s at batch {batch} (faster ->)",
        ylabel="Frechet ratio vs FP32 (lower is better)",
        title=f"{model.name}: speed vs quality (x: failed the gate)",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_plots(report: BenchReport, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    written: list[Path] = []
    for model in report.models:
        if not model.cells:
            continue
        name = model.name
        written.append(throughput_plot(model, out / f"{name}_throughput.png"))
        written.append(latency_plot(model, out / f"{name}_latency.png"))
        for extra in (
            served_plot(model, out / f"{name}_served.png", report.targets.served_ratio),
            quality_plot(model, out / f"{name}_quality.png"),
        ):
            if extra is not None:
                written.append(extra)
    return written
