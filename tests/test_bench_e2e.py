"""A tiny bench end to end: export, every runner, a real tritonserver, the written report."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from serve_support import require_tritonserver
from typer.testing import CliRunner

from gendeploy.bench.results import RunnerQuality
from gendeploy.bench.suites import get_suite
from gendeploy.cli import app
from gendeploy.errors import UsageError
from gendeploy.runtime.tensorrt import tensorrt_availability


@pytest.mark.slow  # end to end, over 10 s here
@pytest.mark.triton
def test_tiny_bench_runs_every_path_including_the_served_one(tmp_path: Path) -> None:
    from gendeploy.bench.run import run_bench

    require_tritonserver()
    runners = ("eager", "onnxruntime", "openvino_int8", "tensorrt")
    suite = replace(get_suite("tiny"), runners=runners)
    report = run_bench(suite, tmp_path / "out", work_dir=tmp_path / "work")

    model = report.models[0]
    cells = {(c.runner, c.batch): c for c in model.cells}
    # TensorRT is timed where it can run (a GPU host with tensorrt), else skipped with the reason
    trt = tensorrt_availability()
    timed = ("eager", "onnxruntime", "openvino_int8", *(("tensorrt",) if trt.ok else ()))
    assert set(cells) == {(r, b) for r in timed for b in (1, 4)}
    reduced = ("openvino_int8", "tensorrt")  # INT8 and FP16 engines: compared loosely
    for c in cells.values():
        assert c.images_per_s > 0 and c.p50_ms <= c.p99_ms
        assert c.max_abs_diff < (0.5 if c.runner in reduced else 1e-4)
    assert cells[("openvino_int8", 1)].precision == "int8"  # what OpenVINO executed
    assert cells[("eager", 1)].speedup == 1.0
    if not trt.ok:
        (skip,) = [s for s in model.skipped if s.runner == "tensorrt"]
        assert trt.reason in skip.reason
    # quality beside speed: every timed runner but the reference, judged like the export's gate
    assert set(model.quality) == set(timed) - {"eager"}
    int8, fp32 = model.quality["openvino_int8"], model.quality["onnxruntime"]
    assert isinstance(int8, RunnerQuality) and int8.passed
    assert isinstance(fp32, RunnerQuality)
    assert fp32.frechet_ratio == pytest.approx(1.0, abs=0.02)
    assert "int8" in model.export.artifacts

    served = model.served
    assert served is not None and not served.skipped, served
    assert served.triton_version
    assert {(r.protocol, r.concurrency) for r in served.results} == {
        (p, c) for p in ("http", "grpc") for c in (1, 2)
    }
    assert all(r.images_per_s > 0 for r in served.results)
    assert max(served.max_abs_diff.values()) < 1e-4

    written = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert written["models"][0]["cells"] == [asdict(c) for c in model.cells]
    assert "tiny_dcgan32_served.png" in written["plots"]
    assert "### Served through Triton" in (tmp_path / "out" / "bench.md").read_text()
    assert report.peaks["fp32"].gflops > 0
    assert all(0 < c.peak_fraction == round(c.gflops / report.peaks["fp32"].gflops, 4)
               for c in model.cells)  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["--suite", "nope"],
        ["--batches", "1,0"],
        ["--batches", "one"],
        ["--runners", "eager,warp_drive"],
        ["--window", "0"],
        ["--threads", "-1"],
        ["--models", "dcgan64,stylegan9"],
        ["--queue-delay-us", "-5"],
    ],
)
def test_bad_flags_fail_before_any_work(tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", *args, "--out", str(out)])
    # gendeploy's own checks raise UsageError; typer's (a flag's type) exit 2 with its message
    checked_by_typer = result.exit_code == 2 and "Invalid value for '--batches'" in result.output
    assert isinstance(result.exception, UsageError) or checked_by_typer, result.output
    assert not out.exists()


def test_perf_analyzer_input_data_sends_one_request_with_rank1_tensors_as_one_element() -> None:
    import numpy as np

    from gendeploy.bench.served import input_data_json
    from gendeploy.bench.sweep import make_feeds

    data = input_data_json(make_feeds(3, latent_dim=4, num_classes=2))
    (step,) = data["data"]
    assert step["z"]["shape"] == [4] and len(step["z"]["content"]) == 4
    assert step["labels"] == {"content": [0], "shape": [1]}
    assert np.isfinite(step["z"]["content"]).all()


@pytest.mark.triton
def test_served_load_is_measured_by_perf_analyzer_and_by_the_fallback_loop(tmp_path: Path) -> None:
    from gendeploy.bench.loadloop import load_loop
    from gendeploy.bench.run import prepare_checkpoint
    from gendeploy.bench.served import find_perf_analyzer, run_perf_analyzer, triton_version
    from gendeploy.bench.suites import TINY
    from gendeploy.bench.sweep import make_feeds
    from gendeploy.bench.timing import StabilityRule
    from gendeploy.export.api import export
    from gendeploy.export.options import ExportOptions, ModelSpec
    from gendeploy.serve.repo import write_repo
    from gendeploy.serve.server import TritonServer

    require_tritonserver()
    checkpoint, _ = prepare_checkpoint(TINY, tmp_path)
    manifest = export(
        ModelSpec(checkpoint=checkpoint),
        ExportOptions(max_batch=4),
        name="tiny",
        out=tmp_path / "e",
    )
    write_repo(tmp_path / "e", tmp_path / "repo")
    feeds = make_feeds(1, manifest.latent_dim, manifest.num_classes)
    # perf_analyzer 2.49 needs trials to spare to call 3 windows stable, more so on a busy host
    rule = StabilityRule(window_s=0.2, max_windows=12, tolerance=0.5)
    with TritonServer(tmp_path / "repo") as server:
        assert re.fullmatch(r"\d+\.\d+\.\d+", triton_version(server.http_url))  # its metadata
        looped = load_loop(server.grpc_url, "tiny", "grpc", 2, feeds, rule)
        assert looped.tool == "tritonclient load loop" and looped.concurrency == 2
        assert looped.images_per_s > 0 and 0 < looped.p50_ms <= looped.p99_ms
        exe = find_perf_analyzer()
        if exe is None:
            pytest.skip("perf_analyzer not found (scripts/get_perf_analyzer.sh fetches it)")
        measured = run_perf_analyzer(exe, server.http_url, "tiny", "http", 2, feeds, 300, rule)
        assert measured.tool == "perf_analyzer" and measured.images_per_s > 0
        assert measured.breakdown_ms["Server Compute Infer"] > 0
