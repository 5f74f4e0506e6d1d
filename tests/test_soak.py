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
    assert all(m["tritonserver_mib"] > 0 and len(m["stubs_mib"]) == 2 for m in report["memory"])
    good = [s for s in report["load"] if not s["error"]]
    assert good and all(s["images_per_s"] > 0 for s in good)
    assert (out / "soak.png").stat().st_size > 1000
    assert "failed of" in (out / "soak.md").read_text()
