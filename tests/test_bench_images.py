"""The image-to-image bench (issue 19) end to end on a tiny export: every runner beside eager,
megapixels in and out, quality against FP32, the INT8 matmul peak and each row's share of the
peak of the precision it executed, the served figure from a real tritonserver."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from image_models import PROOF_MODELS, fitted_weights
from serve_support import require_tritonserver

from gendeploy.bench.images import run_image_bench, write_report
from gendeploy.bench.peak import matmul_peak, peak_for
from gendeploy.bench.timing import StabilityRule
from gendeploy.export.api import export
from gendeploy.export.options import ExportOptions, ModelSpec


def test_the_int8_matmul_peak_is_measured_and_rows_are_shares_of_their_own_precision() -> None:
    rule = StabilityRule(window_s=0.02, max_windows=3)
    int8 = matmul_peak("int8", size=256, threads=1, rule=rule)
    assert int8.dtype == "int8" and int8.gflops == max(int8.each.values()) > 0
    assert set(int8.each) <= {"onnxruntime", "openvino"} and int8.each
    peaks = {"fp32": 100.0, "int8": 400.0}
    assert peak_for("int8", peaks) == ("int8", 400.0)
    assert peak_for("int8+fp32", peaks) == ("int8", 400.0)  # float layers beside INT8 ones
    assert peak_for("fp32", peaks) == ("fp32", 100.0)
    assert peak_for("bf16", peaks) == ("fp32", 100.0)  # no bf16 peak here: FP32's


@pytest.mark.triton
def test_the_image_bench_reports_megapixels_quality_peaks_and_the_served_figure(
    tmp_path: Path,
) -> None:
    require_tritonserver()
    proof = PROOF_MODELS["srvgg"]
    spec = ModelSpec(model=proof.factory, weights=fitted_weights(proof, tmp_path / "w.safetensors"))
    export(spec, ExportOptions(int8=True, max_batch=4, tile=16), name="srvgg", out=tmp_path / "e")
    rule = StabilityRule(window_s=0.05, max_windows=3, warmup_calls=1)
    runners = ("eager", "onnxruntime", "openvino_int8", "eager_bf16")
    report = run_image_bench(tmp_path / "e", (12, 20), 1, runners, 1, rule, say=lambda _: None)
    rows = {(r.runner, r.size): r for r in report.rows}
    assert {"eager", "onnxruntime", "openvino_int8"} <= {r for r, _ in rows}
    for (_, size), row in rows.items():
        assert row.mpix_out_per_s == pytest.approx(16 * row.mpix_in_per_s, rel=1e-2)
        assert row.mpix_in_per_s == pytest.approx(size * size / row.p50_ms / 1e3, rel=1e-2)
        assert row.peak_share == pytest.approx(row.gflops / report.peaks[row.peak_dtype]["gflops"],
                                               abs=1e-4)  # fmt: skip
        assert row.peak_rss_mib > 0
    assert rows[("eager", 12)].speedup == 1.0 and math.isinf(rows[("eager", 12)].psnr_db)
    int8 = rows[("openvino_int8", 20)]
    assert int8.precision.startswith("int8") and int8.peak_dtype == "int8"
    assert 25 < int8.psnr_db < math.inf and int8.max_level_diff > 0
    assert rows[("onnxruntime", 20)].max_level_diff <= 1
    assert {(s["model"], s["size"]) for s in report.served} == {
        (m, s) for m in ("srvgg", "srvgg_int8") for s in (12, 20)
    }
    assert all(s["mpix_in_per_s"] > 0 for s in report.served)
    json_path, md_path = write_report(report, tmp_path / "out")
    written = json.loads(json_path.read_text())
    assert written["rows"][0]["runner"] == "eager" and "int8" in written["peaks"]
    text = md_path.read_text()
    assert "## 20 x 20 in, 80 x 80 out" in text and "| srvgg_int8 | 20 |" in text
    bf16 = [row for (runner, _), row in rows.items() if runner == "eager_bf16"]
    if bf16:  # a CPU with bf16 units (AVX-512 bf16, AMX): the row says bf16 and keeps the picture
        assert all(
            r.precision == "bf16" and r.peak_dtype == "bf16" and r.psnr_db > 25 for r in bf16
        )
    else:
        assert any(s["runner"] == "eager_bf16" for s in report.skipped)
    assert np.isfinite([r.gflops for r in report.rows]).all()
