"""`gendeploy soak` against a real tritonserver: a short soak of a tiny export reports the
server's own request and failure counts, memory over time and the load it drove."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from serve_support import TINY_CONDITIONAL, build_export, make_checkpoint, require_tritonserver

pytestmark = pytest.mark.triton


@pytest.mark.slow  # end to end, over 10 s here
def test_a_short_soak_fails_no_request_and_records_memory_and_load(tmp_path: Path) -> None:
    require_tritonserver()
    export_dir = build_export(
        make_checkpoint(TINY_CONDITIONAL, tmp_path / "c.pt"), tmp_path / "e", "tinyc"
    )
    out = tmp_path / "soak"
    args = [sys.executable, "-m", "gendeploy", "soak", str(export_dir), "--out", str(out)]
    args += ["--duration-s", "16", "--warmup-s", "4", "--tail-s", "4", "--window-s", "1"]
    args += ["--concurrency", "4"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    report = json.loads((out / "soak.json").read_text())
    assert done.returncode == (0 if report["passed"] else 1), done.stderr
    assert report["failed_requests"] == 0
    assert report["requests"] > 100
    assert len(report["memory"]) >= 10
    # two python models (float and uint8), two instances each on CPU
    assert all(m["tritonserver_mib"] > 0 and len(m["stubs_mib"]) == 4 for m in report["memory"])
    good = [s for s in report["load"] if not s["error"]]
    assert good and all(s["images_per_s"] > 0 for s in good)
    assert all(0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] for s in good)
    assert "p99 / p90 within a sample" in (out / "soak.md").read_text()
    assert (out / "soak.png").stat().st_size > 1000
    assert "failed of" in (out / "soak.md").read_text()
    assert 0 <= report["other_share"] <= 1  # the machine's state, beside the figures
    assert "other processes took" in (out / "soak.md").read_text()


def test_the_failure_count_sees_requests_the_model_refused(tmp_path: Path) -> None:
    """Triton's statistics count a request gendeploy's model refused (400) as a success; the
    soak's count must not."""
    import numpy as np

    from gendeploy.bench.soak import server_counts
    from gendeploy.runtime.triton import InferenceError, TritonRunner
    from gendeploy.serve.repo import write_repo
    from gendeploy.serve.server import TritonServer

    require_tritonserver()
    export_dir = build_export(
        make_checkpoint(TINY_CONDITIONAL, tmp_path / "c.pt"), tmp_path / "e", "tinyc"
    )
    write_repo(export_dir, tmp_path / "repo")
    with TritonServer(tmp_path / "repo") as server:
        before = server_counts(server)
        with TritonRunner(server.http_url, "tinyc") as runner:
            for label in (99, -1, 4):  # out of range: refused by the model
                with pytest.raises(InferenceError):
                    runner.run({"seed": np.array([1]), "labels": np.array([label])})
            for label in (0, 1):
                runner.run({"seed": np.array([1]), "labels": np.array([label])})
        after = server_counts(server)
    assert (after[0] - before[0], after[1] - before[1]) == (5, 3)


def test_memory_growth_compares_the_ends_after_warm_up() -> None:
    from gendeploy.bench.soak import MemorySample, SoakOptions, SoakReport

    options = SoakOptions(duration_s=100, warmup_s=20, tail_s=20)
    report = SoakReport("m", options, {}, "tool")
    # warm-up from 50 to 100 MiB (not counted), then flat at 100, then 106 in the last 20 s
    rss = [50 + t for t in range(20)] + [100] * 60 + [106] * 21
    report.memory = [MemorySample(float(t), r, {}) for t, r in enumerate(rss)]
    assert report.memory_growth() == pytest.approx(0.06)
    assert not report.passed()  # 6% > 5%
    report.memory = [MemorySample(float(t), 100, {1: 10}) for t in range(101)]
    assert report.memory_growth() == 0 and report.passed()
