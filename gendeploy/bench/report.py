"""The bench report: goals judged from the measured cells, ``bench.json``, ``bench.md``, plots.

Everything here reads a ``BenchReport`` only (what ``run_bench`` recorded, or a JSON file loaded
back), so a report can be rebuilt from a recorded run without measuring anything again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gendeploy.bench.markdown import render_markdown
from gendeploy.bench.plots import write_plots
from gendeploy.bench.results import (
    BenchReport,
    CellResult,
    Goal,
    Goals,
    ModelReport,
    RunnerQuality,
    Unjudged,
)
from gendeploy.errors import GendeployError
from gendeploy.fileio import atomic_write_bytes

JSON_NAME, MD_NAME = "bench.json", "bench.md"


def _cells(model: ModelReport, batch: int | None = None) -> list[CellResult]:
    return [c for c in model.cells if batch is None or c.batch == batch]


def _best(cells: list[CellResult], key: str) -> CellResult | None:
    return max(cells, key=lambda c: getattr(c, key)) if cells else None


def _goal(goal: str, target: float, value: float | None, by: str, what: str) -> Goal:
    """A goal met when ``value`` reaches ``target`` (higher is better); None: not measured."""
    if value is None:
        return Goal(goal, target, None, None, "", f"not measured: {what}")
    return Goal(goal, target, round(value, 3), value >= target, by, what)


def _cell_goal(goal: str, target: float, cell: CellResult | None, key: str, what: str) -> Goal:
    if cell is None:
        return _goal(goal, target, None, "", what)
    if not cell.stable:
        what += f"; the {cell.runner} cell did not meet the stability rule"
    return _goal(goal, target, float(getattr(cell, key)), cell.runner, what)


def evaluate_goals(report: BenchReport) -> list[Goal]:
    """Speed goals on the suite's goals model (DCGAN-64), INT8 quality on the default preset,
    against the targets the suite set."""
    goals = _speed_goals(report)
    quality_model = next((m for m in report.models if m.quality_goals_model), None)
    if quality_model is not None:
        goals += _int8_goals(quality_model, report)
    return goals


def _gated(model: ModelReport, runner: str) -> bool:
    """The runner passed the quality gate in this run (what it draws matches FP32)."""
    q = model.quality.get(runner)
    return isinstance(q, RunnerQuality) and q.passed


def _speed_goals(report: BenchReport) -> list[Goal]:
    model = next((m for m in report.models if m.goals_model), None)
    if model is None:
        return []
    t = report.targets
    engines = [c for c in model.cells if c.runner != "eager"]
    goals = []
    for batch, target in ((1, t.speedup_batch1), (64, t.speedup_batch64)):
        best = _best([c for c in engines if c.batch == batch], "speedup")
        what = f"best engine's images/s over eager fp32 at batch {batch}" + _ceiling(
            report, model, batch
        )
        eager = next((c for c in _cells(model, batch) if c.runner == "eager"), None)
        if eager is not None and not eager.stable:
            what += "; the eager cell did not meet the stability rule"
        goals.append(
            _cell_goal(
                f"best engine >= {target}x eager at batch {batch}", target, best, "speedup", what
            )
        )
    fp32 = [c for c in model.cells if c.precision == "fp32" and c.batch >= 64]
    bf16 = _best([c for c in model.cells if c.precision == "bf16"], "peak_fraction")
    note = (
        f"; the best bf16 engine ({bf16.runner}, batch {bf16.batch}) reached"
        f" {bf16.peak_fraction:.0%} of the FP32 peak"
        if bf16
        else ""
    )
    goals.append(
        _cell_goal(
            f"best FP32 engine >= {t.fp32_peak_fraction:.0%} of the FP32 matmul peak at batch "
            ">= 64",
            t.fp32_peak_fraction,
            _best(fp32, "peak_fraction"),
            "peak_fraction",
            "achieved GFLOP/s / FP32 matmul GFLOP/s measured in this run" + note,
        )
    )
    goals.append(_served_goal(model, t.served_ratio))
    gated = [c for c in engines if _gated(model, c.runner)]
    for batch in (64, 1):
        best = _best([c for c in gated if c.batch == batch], "speedup")
        what = (
            f"best engine that passed the quality gate (Frechet ratio <= {t.int8_gate:.2f}, "
            f"per-seed PSNR) over eager fp32 at batch {batch}"
        )
        goal = f"best gated engine >= {t.gated_speedup:g}x eager at batch {batch}"
        goals.append(_cell_goal(goal, t.gated_speedup, best, "speedup", what))
    return goals


INT8_RUNNER = "openvino_int8"


def _int8_goals(model: ModelReport, report: BenchReport) -> list[Goal]:
    """The default preset's INT8 against FP32: digits score, the distribution gate, export time."""
    t, name = report.targets, model.name
    q = model.quality.get(INT8_RUNNER)
    goals: list[Goal] = []
    label = f"{name} INT8 label accuracy within {t.int8_label_drop_points} points of FP32"
    frechet = (
        f"{name} INT8 Frechet ratio to real digits within {t.int8_frechet_increase:.0%} of FP32's"
    )
    gate = f"{name} INT8 distribution gate <= {t.int8_gate:.2f}"
    if model.trained is False:  # the goals are about the trained preset's INT8
        why = (
            "this run benched random (untrained) weights, its checkpoint was "
            "missing (`make demo` trains it)"
        )
        goals += [
            _goal(label, t.int8_label_drop_points, None, "", why),
            _goal(frechet, t.int8_frechet_increase, None, "", why),
            _goal(gate, t.int8_gate, None, "", why),
        ]
    else:
        goals += _int8_quality_goals(q, label, frechet, gate, t)
    steps = {
        k: v for k, v in model.export.timings_s.items() if "int8" in k or k == "quality_reference"
    }
    spent = sum(steps.values())
    detail = "export steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in steps.items())
    goal = f"{name}: --int8 adds <= {t.int8_export_s:.0f} s to the export"
    goals.append(
        _within(goal, t.int8_export_s, spent, detail)
        if steps
        else _goal(goal, t.int8_export_s, None, "", "no INT8 export")
    )
    return goals


def _int8_quality_goals(
    q: RunnerQuality | Unjudged | None, label: str, frechet: str, gate: str, t: Goals
) -> list[Goal]:
    """Label accuracy and Frechet ratio to real digits against FP32's; the distribution gate."""
    goals = []
    judged = q if isinstance(q, RunnerQuality) else None
    digits = judged.digits if judged else None
    fp32 = judged.digits_fp32 if judged else None
    if digits is None or fp32 is None:
        why = q.error if isinstance(q, Unjudged) else (
            f"no {INT8_RUNNER} quality in this run" if q is None else "not a trained digits model"
        )  # fmt: skip
        goals += [
            _goal(label, t.int8_label_drop_points, None, "", why),
            _goal(frechet, t.int8_frechet_increase, None, "", why),
        ]
    else:
        acc, acc32 = digits.label_accuracy or 0.0, fp32.label_accuracy or 0.0
        drop = 100 * (acc32 - acc)
        goals.append(_within(label, t.int8_label_drop_points, drop, f"FP32 "
                             f"{acc32:.2%}, INT8 {acc:.2%}: drop in points"))  # fmt: skip
        rel = digits.frechet_ratio / fp32.frechet_ratio - 1
        goals.append(_within(frechet, t.int8_frechet_increase, rel, f"FP32 "
                             f"{fp32.frechet_ratio:.3f}, INT8 {digits.frechet_ratio:.3f}: "
                             "relative increase"))  # fmt: skip
    if judged is None:
        why = q.error if isinstance(q, Unjudged) else "not measured"
        goals.append(_goal(gate, t.int8_gate, None, "", why))
    else:
        what = f"Frechet ratio on {judged.seeds} seeds, {judged.feature_space} features"
        goals.append(_within(gate, t.int8_gate, judged.frechet_ratio, what))
    return goals


def _within(goal: str, limit: float, value: float, what: str) -> Goal:
    """A goal met when ``value`` is at most ``limit`` (lower is better)."""
    by = INT8_RUNNER if "INT8" in goal else "export"
    return Goal(goal, limit, round(value, 4), value <= limit, by, what)


def _ceiling(report: BenchReport, model: ModelReport, batch: int) -> str:
    """What the machine allows: the speed-up an engine running at the best matmul peak would get."""
    peaks = {k: v.gflops for k, v in report.peaks.items()}
    eager = next((c for c in _cells(model, batch) if c.runner == "eager"), None)
    if not peaks or eager is None or eager.gflops <= 0:
        return ""
    dtype = max(peaks, key=lambda k: peaks[k])
    return (
        f"; ceiling: eager runs at {eager.gflops:.1f} GFLOP/s, so an engine at the {dtype}"
        f" matmul peak ({peaks[dtype]:.0f} GFLOP/s) would be {peaks[dtype] / eager.gflops:.1f}x"
    )


def _served_goal(model: ModelReport, target: float) -> Goal:
    goal = f"served at concurrency 4 >= {target}x in-process batch-1 throughput"
    served = model.served
    level4 = [r for r in (served.results if served else []) if r.concurrency == 4]
    inproc = next((c for c in _cells(model, 1) if c.runner == "onnxruntime"), None)
    if not level4 or inproc is None:
        reason = (served.skipped if served else "") or (
            "no concurrency-4 result or no onnxruntime batch-1 cell"
        )
        return _goal(goal, target, None, "", reason)
    best = max(level4, key=lambda r: r.images_per_s)
    what = (
        f"served {best.images_per_s:.1f} img/s over {best.protocol} vs in-process ONNX"
        f" Runtime batch 1 {inproc.images_per_s:.1f} img/s (the served engine)"
    )
    by = f"triton {best.protocol} ({best.tool})"
    return _goal(goal, target, best.images_per_s / inproc.images_per_s, by, what)


def load_report(path: Path | str) -> BenchReport:
    path = Path(path)
    if path.is_dir():
        path = path / JSON_NAME
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GendeployError(f"cannot read bench report {path}: {e}") from None
    return BenchReport.from_dict(data, str(path))


def write_report(report: BenchReport, out: Path) -> list[Path]:
    """Judge the goals, then write the JSON, the plots and the Markdown that shows them."""
    report.goals = evaluate_goals(report)
    plots = write_plots(report, out)
    report.plots = [p.name for p in plots]
    atomic_write_bytes(out / JSON_NAME, (json.dumps(report.to_dict(), indent=1) + "\n").encode())
    atomic_write_bytes(out / MD_NAME, render_markdown(report).encode())
    return [out / JSON_NAME, out / MD_NAME, *plots]
