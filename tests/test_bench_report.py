"""The report, its goals and its plots, built from a recorded bench JSON (no timing)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from gendeploy.bench.machine import contended
from gendeploy.bench.report import evaluate_goals, load_report, write_report
from gendeploy.bench.results import BenchReport, Goal
from gendeploy.cli import app
from gendeploy.errors import GendeployError

RUNNERS = {"eager": ("fp32", 1.0), "onnxruntime": ("fp32", 2.0), "eager_bf16": ("bf16", 3.0)}
FLOPS = 209_256_448  # DCGAN-64


def cell(runner: str, batch: int, eager_ips: float) -> dict[str, Any]:
    precision, speedup = RUNNERS[runner]
    ips = eager_ips * speedup
    gflops = ips * FLOPS / 1e9
    return {
        "runner": runner,
        "precision": precision,
        "batch": batch,
        "p50_ms": 1e3 * batch / ips,
        "p90_ms": 1.1e3 * batch / ips,
        "p99_ms": 1.3e3 * batch / ips,
        "mean_ms": 1e3 * batch / ips,
        "images_per_s": ips,
        "gflops": gflops,
        "peak_fraction": gflops / 100.0,
        "speedup": speedup,
        "max_abs_diff": 0.0 if runner == "eager" else 3e-7,
        "peak_rss_mib": 500.0,
        "stable": runner != "eager_bf16",
        "windows": 3,
        "calls": 30,
    }


def recorded(served_ips: float = 500.0) -> dict[str, Any]:
    cells = [cell(r, b, ips) for b, ips in ((1, 200.0), (64, 400.0)) for r in RUNNERS]
    served = [
        {
            "protocol": p,
            "concurrency": c,
            "batch": 1,
            "p50_ms": 4.0,
            "p90_ms": 5.0,
            "p99_ms": 9.0,
            "mean_ms": 4.2,
            "images_per_s": served_ips * c / 4,
            "stable": True,
            "tool": "perf_analyzer",
        }
        for p in ("http", "grpc")
        for c in (1, 4)
    ]
    model = {
        "name": "dcgan64",
        "config": {
            "arch": "dcgan",
            "image_channels": 3,
            "image_size": 64,
            "width": 64,
            "num_classes": 0,
        },
        "source": "random weights (seed 0)",
        "goals_model": True,
        "flops_per_image": FLOPS,
        "cells": cells,
        "skipped": [{"runner": "tensorrt", "reason": "tensorrt not installed"}],
        "served": {
            "model": "dcgan64 (python backend)",
            "tool": "perf_analyzer",
            "perf_analyzer_version": "",
            "triton_version": "2.51.0",
            "max_abs_diff": {"http": 4e-8, "grpc": 4e-8},
            "results": served,
            "errors": [],
        },
        "profile": [
            {
                "runner": "eager",
                "batch": 1,
                "ms_per_call": 5.0,
                "ops": [{"op": "aten::_convolution", "ms": 4.0, "share": 0.8}],
            }
        ],
    }
    machine = {
        "cpu": {"model": "Test CPU", "flags": ["avx2", "avx512_bf16"]},
        "physical_cores": 2,
        "logical_cores": 2,
        "memory_gib": 8.0,
        "load_average_1m_5m_15m": [0.1, 0.1, 0.1],
        "gpus": [],
        "versions": {"torch": "2.13.0"},
    }
    return {
        "schema_version": 1,
        "suite": "default",
        "command": "gendeploy bench",
        "started": "2026-11-28T15:30:00+00:00",
        "duration_s": 600.0,
        "machine": machine,
        "threads": 2,
        "models": [model],
        "rule": {"window_s": 0.5, "stable_windows": 3, "tolerance": 0.1, "max_windows": 12},
        "peaks": {"fp32": {"gflops": 100.0}, "bf16": {"gflops": 200.0}},
        "busy": {"other_processes_cpu_share": 0.02, "load_average_end": [0.2, 0.1, 0.1]},
    }


def judged(data: dict[str, Any]) -> dict[str, Goal]:
    """The goals of a recorded report, read back as ``--from-json`` reads it."""
    return {g.goal: g for g in evaluate_goals(BenchReport.from_dict(data))}


def table_rows(md: str) -> list[list[str]]:
    """Every Markdown table row as its cells (split on unescaped '|', '\\|' unescaped)."""
    return [
        [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        for line in md.splitlines()
        if line.startswith("|")
    ]


def test_goals_are_judged_from_the_recorded_ratios() -> None:
    goals = judged(recorded(served_ips=500.0))
    batch1 = goals["best engine >= 6.0x eager at batch 1"]
    assert batch1.measured == 3.0 and batch1.by == "eager_bf16" and batch1.met is False
    assert goals["best engine >= 1.5x eager at batch 64"].met is True
    peak = goals["best FP32 engine >= 85% of the FP32 matmul peak at batch >= 64"]
    assert peak.by == "onnxruntime"  # bf16 is faster but is not an FP32 engine
    assert peak.measured == pytest.approx(800 * FLOPS / 1e9 / 100.0, abs=1e-3)
    served = goals["served at concurrency 4 >= 0.9x in-process batch-1 throughput"]
    assert served.measured == pytest.approx(500.0 / 400.0)  # over onnxruntime at batch 1
    assert served.met is True


def test_a_slow_server_misses_its_goal() -> None:
    goals = judged(recorded(served_ips=100.0))
    served = goals["served at concurrency 4 >= 0.9x in-process batch-1 throughput"]
    assert served.met is False and served.measured == pytest.approx(0.25)


def test_goal_targets_come_from_the_report_the_suite_made() -> None:
    strict = {**recorded(served_ips=500.0), "targets": {"served_ratio": 2.0}}
    served = judged(strict)["served at concurrency 4 >= 2.0x in-process batch-1 throughput"]
    assert served.target == 2.0 and served.met is False


def quality(ratio: float, passed: bool, digits: tuple[float, float] | None = None) -> dict:
    q: dict[str, Any] = {
        "precision": "int8",
        "seeds": 1000,
        "feature_space": "digits classifier (64-d feature layer)",
        "psnr": {"min_db": 40.0, "p1_db": 45.0, "median_db": 50.0, "mean_db": 50.0},
        "frechet": ratio * 0.01,
        "frechet_floor": 0.01,
        "frechet_ratio": ratio,
        "max_frechet_ratio": 1.1,
        "psnr_bounds": {"min_p1_db": 25.0, "min_median_db": 30.0},
        "passed": passed,
        "failures": [] if passed else ["distribution: Frechet ratio 3.0 > 1.1"],
    }
    if digits is not None:
        q["digits"] = {"label_accuracy": digits[0], "frechet_ratio": digits[1]}
        q["digits_fp32"] = {"label_accuracy": 0.99, "frechet_ratio": 1.70}
    return q


def with_quality() -> dict[str, Any]:
    report = recorded()
    dcgan = report["models"][0]
    # bf16 is the fastest engine but failed the quality gate: not a "gated engine"
    dcgan["quality"] = {"onnxruntime": quality(1.0, True), "eager_bf16": quality(3.0, False)}
    digits = json.loads(json.dumps(dcgan))
    digits.update(name="digits_cdcgan32", goals_model=False, quality_goals_model=True)
    digits["quality"] = {"openvino_int8": quality(1.02, True, digits=(0.987, 1.76))}
    int8_cell = {**cell("onnxruntime", 64, 400.0), "runner": "openvino_int8", "precision": "int8"}
    digits["cells"].append(int8_cell)
    digits["export"] = {"timings_s": {"quality_reference": 8.0, "int8_quantize": 4.0,
                                      "validate_int8": 2.0, "export_fp32": 3.0}}  # fmt: skip
    report["models"].append(digits)
    return report


def test_quality_goals_judge_gated_engines_and_the_default_presets_int8() -> None:
    goals = judged(with_quality())
    gated = goals["best gated engine >= 6x eager at batch 64"]
    assert gated.by == "onnxruntime" and gated.measured == 2.0 and gated.met is False
    labels = goals["digits_cdcgan32 INT8 label accuracy within 0.5 points of FP32"]
    assert labels.measured == pytest.approx(0.3) and labels.met is True
    frechet = goals["digits_cdcgan32 INT8 Frechet ratio to real digits within 5% of FP32's"]
    assert frechet.measured == pytest.approx(1.76 / 1.70 - 1, abs=1e-4) and frechet.met
    assert goals["digits_cdcgan32 INT8 distribution gate <= 1.10"].measured == 1.02
    timing = goals["digits_cdcgan32: --int8 adds <= 30 s to the export"]
    assert timing.measured == 14.0 and timing.met is True  # export_fp32 is not INT8's


def test_the_report_shows_quality_beside_speed_a_quality_plot_and_the_matrix_units(
    tmp_path: Path,
) -> None:
    write_report(BenchReport.from_dict(with_quality()), tmp_path)
    md = (tmp_path / "bench.md").read_text()
    assert "- Matrix extensions: AMX (int8, bf16 tiles): no; AVX-512 VNNI" in md
    assert "AVX-512 bf16: yes" in md
    assert any("1.000" in row for row in table_rows(md)) and "3.000 **failed**" in md
    assert "1.020 (98.70% labels)" in md
    with Image.open(tmp_path / "dcgan64_quality.png") as image:
        assert image.format == "PNG"
    assert "](dcgan64_quality.png)" in md


def test_report_markdown_and_plots_are_rebuilt_from_a_recorded_json(tmp_path: Path) -> None:
    source = tmp_path / "recorded.json"
    source.write_text(json.dumps(recorded()))
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["bench", "--from-json", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "bench.md").read_text()
    rows = table_rows(md)
    goal = ["best engine >= 6.0x eager at batch 1", "6.0", "3.0", "eager_bf16", "**missed**"]
    assert [row[:5] for row in rows if row[0] == goal[0]] == [goal]
    assert "**met**" in md
    assert ["`tensorrt`", "tensorrt not installed"] in rows  # skipped, with its reason
    assert ["grpc", "4", "500.0"] in [row[:3] for row in rows]
    assert "aten::_convolution 80%" in md
    for name in ("dcgan64_throughput.png", "dcgan64_latency.png", "dcgan64_served.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 300
        assert f"]({name})" in md
    again = load_report(out)
    assert again.plots == ["dcgan64_throughput.png", "dcgan64_latency.png", "dcgan64_served.png"]
    assert json.loads((out / "bench.json").read_text())["schema_version"] == 2
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_a_run_on_a_busy_machine_says_its_ratios_are_not_trustworthy(tmp_path: Path) -> None:
    report = BenchReport.from_dict(recorded())
    write_report(report, tmp_path / "quiet")
    assert "not trustworthy" not in (tmp_path / "quiet" / "bench.md").read_text()
    report.busy.other_processes_cpu_share = 0.4
    write_report(report, tmp_path / "busy")
    md = (tmp_path / "busy" / "bench.md").read_text()
    assert "Other processes took 40% of this machine's CPU time" in md
    assert "not trustworthy" in md


def test_a_report_without_a_goals_model_judges_nothing(tmp_path: Path) -> None:
    data = recorded()
    data["models"][0]["goals_model"] = False
    report = BenchReport.from_dict(data)
    write_report(report, tmp_path)
    assert report.goals == []
    assert "## Goals" not in (tmp_path / "bench.md").read_text()


def test_a_file_that_is_not_a_bench_report_gets_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bench.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(GendeployError, match="not a gendeploy bench report"):
        load_report(bad)
    result = CliRunner().invoke(app, ["bench", "--from-json", str(tmp_path / "missing.json")])
    assert result.exit_code != 0


def test_a_report_of_an_unknown_schema_version_is_refused_with_the_fix(tmp_path: Path) -> None:
    newer = tmp_path / "bench.json"
    newer.write_text(json.dumps({**recorded(), "schema_version": 99}))
    cmd = [sys.executable, "-m", "gendeploy", "bench", "--from-json", str(newer)]
    result = subprocess.run([*cmd, "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()  # one line, naming the version and the fix
    assert "schema_version 99" in line and "re-run `gendeploy bench`" in line
    assert not (tmp_path / "bench.md").exists()


def test_a_report_with_a_field_of_the_wrong_type_is_refused_naming_the_field() -> None:
    bad = recorded()
    bad["models"][0]["cells"][0]["batch"] = "many"
    with pytest.raises(GendeployError, match=r"at models\.0\.cells\.0\.batch"):
        BenchReport.from_dict(bad)


def test_a_reason_with_a_pipe_stays_in_its_cell(tmp_path: Path) -> None:
    data = recorded()
    data["models"][0]["skipped"] = [{"runner": "tensorrt", "reason": "needs a GPU | CUDA"}]
    write_report(BenchReport.from_dict(data), tmp_path)
    rows = table_rows((tmp_path / "bench.md").read_text())
    assert ["`tensorrt`", "needs a GPU | CUDA"] in rows


def test_a_run_is_contended_only_when_others_needed_the_cores_its_threads_used() -> None:
    assert contended(0.5, threads=2, cores=2)  # one core busy elsewhere, two threads here
    assert not contended(0.5, threads=1, cores=2)  # the other core was free for our one thread
    assert not contended(0.05, threads=2, cores=2)  # background noise


def test_an_untrained_default_preset_is_said_so_and_its_quality_goals_are_not_judged(
    tmp_path: Path,
) -> None:
    report = with_quality()
    digits = next(m for m in report["models"] if m["name"] == "digits_cdcgan32")
    digits["trained"] = False  # runs/demo/checkpoint.pt was missing: random weights benched
    goals = judged(report)
    for goal in (
        "digits_cdcgan32 INT8 label accuracy within 0.5 points of FP32",
        "digits_cdcgan32 INT8 Frechet ratio to real digits within 5% of FP32's",
        "digits_cdcgan32 INT8 distribution gate <= 1.10",
    ):
        assert goals[goal].met is None and "untrained" in goals[goal].detail
    assert goals["digits_cdcgan32: --int8 adds <= 30 s to the export"].met is True
    write_report(BenchReport.from_dict(report), tmp_path)
    md = (tmp_path / "bench.md").read_text()
    digits_section = md[md.index("## `digits_cdcgan32`") :]
    assert "**Untrained weights**" in digits_section
    assert "**Untrained weights**" not in md[: md.index("## `digits_cdcgan32`")]


def test_the_cotenant_report_judges_the_adaptive_setting_and_writes_its_picture(
    tmp_path: Path,
) -> None:
    from gendeploy.bench.cotenant import CotenantReport, Phase, write_report
    from gendeploy.bench.machine import machine_info

    report = CotenantReport("2026-12-07T00:00:00+00:00", "cmd", machine_info(), steps=200)
    for neighbour, share, train, export in (
        ("quiet", 0.0, 20.0, 30.0),
        ("one busy process", 0.5, 15.0, 40.0),
    ):
        report.phases.append(Phase("train", neighbour, "adaptive", train, share, [1, 2]))
        report.phases.append(Phase("export", neighbour, "adaptive", export, share))
        report.phases.append(
            Phase("train", neighbour, "pinned 2", train / 4 if share else train, share, [2])
        )
        report.phases.append(
            Phase("export", neighbour, "pinned 2", export * 3 if share else export, share)
        )
        report.phases.append(Phase("train", neighbour, "pinned 1", 16.0, share, [1]))
        report.phases.append(Phase("export", neighbour, "pinned 1", export, share))
    written = write_report(report, tmp_path)
    md = (tmp_path / "cotenant.md").read_text()
    assert "| adaptive | 0.75 | 0.75 |" in md and "| pinned 2 | 0.19 | 0.25 |" in md
    assert ">= 70% of its quiet steps/s with the same settings: 75% (met)" in md
    assert "1 thread on the quiet machine trains at 16.00 steps/s, 80% of" in md
    assert "the adaptive setting keeps 94% of that" in md
    assert all(p.stat().st_size > 0 for p in written) and written[-1].suffix == ".png"


def test_the_cotenant_is_another_process_to_the_busy_meter() -> None:
    """The bench's busy process is not our descendant, so its CPU time reads as a co-tenant's."""
    import os
    import signal

    from gendeploy.bench.cotenant import _start_cotenant
    from gendeploy.bench.machine import BusyMeter

    meter = BusyMeter(interval_s=0.2)
    hog = _start_cotenant()
    try:
        deadline = time.monotonic() + 30
        while meter.taken_by(hog) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not meter.is_ours(hog) and meter.taken_by(hog) >= 0.5
    finally:
        os.kill(hog, signal.SIGKILL)
        meter.other_share()


def test_the_served_time_split_adds_up_to_instance_time_per_image() -> None:
    """engine + model python + hop + server I/O + idle = instances / throughput, per image."""
    from gendeploy.bench.split import ServerSnapshot, time_split

    zero = ServerSnapshot(0.0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    after = ServerSnapshot(
        at=10.0, images=1000, batches=250, input_s=0.1, infer_s=5.0, output_s=0.2,
        engine_s=4.0, execute_s=4.5, server_cpu_s=2.0, stubs_cpu_s=9.0, machine_busy_s=16.0,
    )  # fmt: skip
    split = time_split(zero, after, instances=1, images_per_s=100.0, client_cpu_s=1.0, cores=2)
    assert split is not None
    parts = (split.engine_ms, split.model_python_ms, split.backend_hop_ms, split.server_io_ms)
    assert parts == (4.0, 0.5, 0.5, 0.3) and split.idle_ms == 4.7 and split.mean_batch == 4.0
    assert sum(parts) + split.idle_ms == 1000 / 100.0
    shares = (split.cpu_client, split.cpu_server, split.cpu_stubs, split.cpu_other)
    assert shares == (0.05, 0.1, 0.45, 0.2)  # of 2 cores x 10 s
    assert time_split(zero, zero, 1, 100.0, 0.0) is None  # nothing served: no split
