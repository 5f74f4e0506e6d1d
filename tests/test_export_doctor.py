"""`gendeploy doctor` and the prepared GPU check's behaviour where there is no GPU."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
from test_export_user_model import cli

from gendeploy.export.doctor import diagnose
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


def test_gpu_check_without_tensorrt_says_why_and_records_it(tmp_path: Path) -> None:
    from gendeploy.export.gpu_check import main

    status = tensorrt_availability()
    if status.ok:
        pytest.skip("TensorRT and CUDA are present: run `make gpu-check` instead")
    assert main([str(tmp_path)]) == 1
    assert json.loads((tmp_path / "results.json").read_text()) == {
        "ok": False,
        "python": platform.python_version(),
        "reason": status.reason,
    }
