"""The bench report: goals judged from the measured cells, ``bench.json``, ``bench.md``, plots.

Everything here reads the report dictionary only (what ``run_bench`` recorded, or a JSON file
loaded back), so a report can be rebuilt from a recorded run without measuring anything again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gendeploy.bench.markdown import render_markdown
from gendeploy.bench.plots import write_plots
from gendeploy.errors import GendeployError
from gendeploy.fileio import atomic_write_bytes

JSON_NAME, MD_NAME = "bench.json", "bench.md"


def _cells(model: dict[str, Any], batch: int | None = None) -> list[dict[str, Any]]:
    return [c for c in model["cells"] if batch is None or c["batch"] == batch]


def _best(cells: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    return max(cells, key=lambda c: c[key]) if cells else None


def _goal(
    goal: str, target: float, cell: dict[str, Any] | None, key: str, what: str
) -> dict[str, Any]:
    if cell is None:
        return {
            "goal": goal,
            "target": target,
            "measured": None,
            "met": None,
            "by": "",
            "detail": f"not measured: {what}",
        }
    value = float(cell[key])
    if cell.get("stable") is False:
        what += f"; the {cell.get('runner')} cell did not meet the stability rule"
    return {
        "goal": goal,
        "target": target,
        "measured": round(value, 3),
        "met": value >= target,
        "by": cell.get("runner", ""),
        "detail": what,
    }


def evaluate_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Speed goals on the suite's goals model (DCGAN-64), INT8 quality on the default preset."""
    goals = _speed_goals(report)
    quality_model = next(
        (m for m in report.get("models", []) if m.get("quality_goals_model")), None
    )
    if quality_model is not None:
        goals += _int8_goals(quality_model)
    return goals


def _gated(model: dict[str, Any], runner: str) -> bool:
    """The runner passed the quality gate in this run (what it draws matches FP32)."""
    return bool((model.get("quality") or {}).get(runner, {}).get("passed"))


def _speed_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    model = next((m for m in report.get("models", []) if m.get("goals_model")), None)
    if model is None:
        return []
    engines = [c for c in model["cells"] if c["runner"] != "eager"]
    goals = []
    for batch, target in ((1, 6.0), (64, 1.5)):
        best = _best([c for c in engines if c["batch"] == batch], "speedup")
        what = f"best engine's images/s over eager fp32 at batch {batch}" + _ceiling(
            report, model, batch
        )
        eager = next((c for c in _cells(model, batch) if c["runner"] == "eager"), None)
        if eager is not None and not eager["stable"]:
            what += "; the eager cell did not meet the stability rule"
        goals.append(
            _goal(f"best engine >= {target}x eager at batch {batch}", target, best, "speedup", what)
        )
    fp32 = [c for c in model["cells"] if c["precision"] == "fp32" and c["batch"] >= 64]
    bf16 = _best([c for c in model["cells"] if c["precision"] == "bf16"], "peak_fraction")
    note = (
        f"; the best bf16 engine ({bf16['runner']}, batch {bf16['batch']}) reached"
        f" {bf16['peak_fraction']:.0%} of the FP32 peak"
        if bf16
        else ""
    )
    goals.append(
        _goal(
            "best FP32 engine >= 85% of the FP32 matmul peak at batch >= 64",
            0.85,
            _best(fp32, "peak_fraction"),
            "peak_fraction",
            "achieved GFLOP/s / FP32 matmul GFLOP/s measured in this run" + note,
        )
    )
    goals.append(_served_goal(model))
    gated = [c for c in engines if _gated(model, c["runner"])]
    for batch in (64, 1):
        best = _best([c for c in gated if c["batch"] == batch], "speedup")
        what = (
            f"best engine that passed the quality gate (Frechet ratio <= 1.10, per-seed PSNR) "
            f"over eager fp32 at batch {batch}"
        )
        goals.append(
            _goal(f"best gated engine >= 6x eager at batch {batch}", 6.0, best, "speedup", what)
        )
    return goals


INT8_RUNNER = "openvino_int8"


def _int8_goals(model: dict[str, Any]) -> list[dict[str, Any]]:
    """The default preset's INT8 against FP32: digits score, the distribution gate, export time."""
    name = model["name"]
    q = (model.get("quality") or {}).get(INT8_RUNNER)
    goals = []
    digits, fp32 = (q or {}).get("digits"), (q or {}).get("digits_fp32")
    label = f"{name} INT8 label accuracy within 0.5 points of FP32"
    frechet = f"{name} INT8 Frechet ratio to real digits within 5% of FP32's"
    if not digits or not fp32:
        why = (q or {}).get("error") or (
            f"no {INT8_RUNNER} quality in this run" if q is None else "not a trained digits model"
        )
        goals += [_goal(label, 0.5, None, "", why), _goal(frechet, 0.05, None, "", why)]
    else:
        drop = 100 * (fp32["label_accuracy"] - digits["label_accuracy"])
        goals.append(_within(label, 0.5, drop, f"FP32 {fp32['label_accuracy']:.2%}, INT8 "
                             f"{digits['label_accuracy']:.2%}: drop in points"))  # fmt: skip
        rel = digits["frechet_ratio"] / fp32["frechet_ratio"] - 1
        goals.append(_within(frechet, 0.05, rel, f"FP32 {fp32['frechet_ratio']:.3f}, INT8 "
                             f"{digits['frechet_ratio']:.3f}: relative increase"))  # fmt: skip
    gate = f"{name} INT8 distribution gate <= 1.10"
    if q is None or "frechet_ratio" not in q:
        goals.append(_goal(gate, 1.10, None, "", (q or {}).get("error", "not measured")))
    else:
        what = f"Frechet ratio on {q['seeds']} seeds, {q['feature_space']} features"
        goals.append(_within(gate, 1.10, q["frechet_ratio"], what))
    timings = (model.get("export") or {}).get("timings_s") or {}
    steps = {k: v for k, v in timings.items() if "int8" in k or k == "quality_reference"}
    spent = sum(steps.values())
    detail = "export steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in steps.items())
    goal = f"{name}: --int8 adds <= 30 s to the export"
    goals.append(
        _within(goal, 30.0, spent, detail)
        if steps
        else _goal(goal, 30.0, None, "", "no INT8 export")
    )
    return goals


def _within(goal: str, limit: float, value: float, what: str) -> dict[str, Any]:
    """A goal met when ``value`` is at most ``limit`` (lower is better)."""
    return {
        "goal": goal,
        "target": limit,
        "measured": round(value, 4),
        "met": value <= limit,
        "by": INT8_RUNNER if "INT8" in goal else "export",
        "detail": what,
    }


def _ceiling(report: dict[str, Any], model: dict[str, Any], batch: int) -> str:
    """What the machine allows: the speed-up an engine running at the best matmul peak would get."""
    peaks = {k: v["gflops"] for k, v in (report.get("peaks") or {}).items()}
    eager = next((c for c in _cells(model, batch) if c["runner"] == "eager"), None)
    if not peaks or eager is None or eager["gflops"] <= 0:
        return ""
    dtype = max(peaks, key=lambda k: peaks[k])
    return (
        f"; ceiling: eager runs at {eager['gflops']:.1f} GFLOP/s, so an engine at the {dtype}"
        f" matmul peak ({peaks[dtype]:.0f} GFLOP/s) would be {peaks[dtype] / eager['gflops']:.1f}x"
    )


def _served_goal(model: dict[str, Any]) -> dict[str, Any]:
    goal = "served at concurrency 4 >= 0.9x in-process batch-1 throughput"
    served = model.get("served") or {}
    level4 = [r for r in served.get("results", []) if r["concurrency"] == 4]
    inproc = next((c for c in _cells(model, 1) if c["runner"] == "onnxruntime"), None)
    if not level4 or inproc is None:
        reason = served.get("skipped") or "no concurrency-4 result or no onnxruntime batch-1 cell"
        return _goal(goal, 0.9, None, "", reason)
    best = max(level4, key=lambda r: r["images_per_s"])
    ratio = best["images_per_s"] / inproc["images_per_s"]
    cell = {"ratio": ratio, "runner": f"triton {best['protocol']} ({best['tool']})"}
    what = (
        f"served {best['images_per_s']:.1f} img/s over {best['protocol']} vs in-process ONNX"
        f" Runtime batch 1 {inproc['images_per_s']:.1f} img/s (the served engine)"
    )
    return _goal(goal, 0.9, cell, "ratio", what)


def load_report(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / JSON_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GendeployError(f"cannot read bench report {path}: {e}") from None
    if not isinstance(data, dict) or "models" not in data:
        raise GendeployError(f"{path} is not a gendeploy bench report (no 'models')")
    return data


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Judge the goals, then write the JSON, the plots and the Markdown that shows them."""

    report["goals"] = evaluate_goals(report)
    plots = write_plots(report, out)
    report["plots"] = [p.name for p in plots]
    atomic_write_bytes(out / JSON_NAME, (json.dumps(report, indent=1) + "\n").encode())
    atomic_write_bytes(out / MD_NAME, render_markdown(report).encode())
    return [out / JSON_NAME, out / MD_NAME, *plots]
