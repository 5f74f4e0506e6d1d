"""`gendeploy doctor` and the prepared GPU check's behaviour where there is no GPU."""

from __future__ import annotations

import io
import json
import platform
import sys
from pathlib import Path

import pytest
from cli_support import cli

from gendeploy.bench.doctor import Finding, Report, diagnose
from gendeploy.bench.served import find_perf_analyzer
from gendeploy.runtime.tensorrt import tensorrt_availability


def test_doctor_lists_the_machine_and_the_paths_it_allows() -> None:
    code, stdout, stderr = cli("doctor")
    assert code == 0, stderr
    for what in ("CUDA", "TensorRT", "ONNX Runtime", "OpenVINO", "tritonserver", "perf_analyzer"):
        assert what in stdout
    for path in ("export: TensorRT FP16 engine", "serve: Triton python backend", "bench: eager"):
        assert path in stdout
    report = diagnose()
    assert report.facility("ONNX Runtime").ok
    engine = next(p for p in report.paths if p.what.startswith("export: TensorRT"))
    assert engine.ok == tensorrt_availability().ok
    if not engine.ok:
        assert engine.detail == tensorrt_availability().reason


def test_doctor_prints_install_advice_with_its_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from gendeploy.cli.export import print_report

    advice = "not installed (pip install 'gendeploy[openvino]')"
    out = io.StringIO()
    print_report(Report([Finding("OpenVINO [bf16]", False, advice)]), Console(file=out, width=200))
    assert advice in out.getvalue() and "OpenVINO [bf16]" in out.getvalue()
    monkeypatch.setenv("COLUMNS", "200")
    if diagnose().facility("OpenVINO").ok:
        return  # installed here: no advice to print
    code, stdout, _ = cli("doctor")
    assert code == 0 and advice in stdout


def _without_perf_analyzer_on_path(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    monkeypatch.delenv("GENDEPLOY_PERF_ANALYZER", raising=False)
    monkeypatch.setenv("GENDEPLOY_CACHE_DIR", str(cache))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if (Path(sys.executable).parent / "perf_analyzer").exists():
        pytest.skip("a perf_analyzer sits beside this Python: the cache is not looked at")


def test_doctor_finds_perf_analyzer_where_the_bench_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _without_perf_analyzer_on_path(monkeypatch, tmp_path)
    # what scripts/get_perf_analyzer.sh leaves in the cache: a wrapper that runs the binary
    wrapper = tmp_path / "perf_analyzer" / "perf_analyzer"
    wrapper.parent.mkdir()
    wrapper.write_text("#!/bin/sh\necho 'perf_analyzer from the cache'\n")
    wrapper.chmod(0o755)
    assert find_perf_analyzer() == wrapper
    found = diagnose().facility("perf_analyzer")
    assert found.ok and found.detail == f"{wrapper} (perf_analyzer from the cache)"


def test_doctor_without_perf_analyzer_points_at_the_fetch_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _without_perf_analyzer_on_path(monkeypatch, tmp_path)
    assert find_perf_analyzer() is None
    missing = diagnose().facility("perf_analyzer")
    assert not missing.ok and "run scripts/get_perf_analyzer.sh" in missing.detail
    assert "wheel" not in missing.detail  # installing tritonclient 2.49 would break onnx


def test_gpu_check_without_tensorrt_says_why_and_records_it(tmp_path: Path) -> None:
    from gendeploy.bench.gpu_check import main

    status = tensorrt_availability()
    if status.ok:
        pytest.skip("TensorRT and CUDA are present: run `make gpu-check` instead")
    assert main([str(tmp_path)]) == 1
    assert json.loads((tmp_path / "results.json").read_text()) == {
        "ok": False,
        "python": platform.python_version(),
        "reason": status.reason,
    }
