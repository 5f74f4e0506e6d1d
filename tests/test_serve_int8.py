"""The INT8 export served by a real tritonserver (python backend, loopback): the model runs the
INT8 artifact with OpenVINO inside Triton and returns what OpenVINO returns in process; the
``<name>_openvino`` model (Triton's OpenVINO backend, NGC only) is written but not loaded here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from serve_support import TINY_CONDITIONAL, make_checkpoint, require_tritonserver

from gendeploy.export.api import export
from gendeploy.export.options import ExportOptions, ModelSpec
from gendeploy.manifest import load_manifest
from gendeploy.runtime.openvino import OpenVINORunner
from gendeploy.runtime.triton import TritonRunner
from gendeploy.seeds import draw_latents
from gendeploy.serve.repo import write_repo
from gendeploy.serve.server import TritonServer, served_artifact

pytestmark = pytest.mark.triton


@pytest.mark.slow  # end to end, over 10 s here
def test_the_int8_model_is_served_with_openvino_and_matches_it_in_process(tmp_path: Path) -> None:
    require_tritonserver()
    checkpoint = make_checkpoint(TINY_CONDITIONAL, tmp_path / "c.pt")
    out = tmp_path / "export"
    export(ModelSpec(checkpoint=checkpoint), ExportOptions(int8=True, max_batch=8), "tq", out)
    manifest = load_manifest(out)
    write_repo(out, tmp_path / "repo")
    server = TritonServer(tmp_path / "repo", log_path=tmp_path / "tritonserver.log")
    server.start()
    try:
        assert "tq_int8" in server.loaded
        assert "tq_openvino" in server.skipped  # the pip tritonserver has no OpenVINO backend
        seeds = [3, 14, 15, 92]
        z = draw_latents(seeds, manifest.latent_dim)
        labels = np.array([0, 1, 2, 3], np.int64)
        with TritonRunner(server.http_url, "tq_int8") as client:
            served = client.run({"z": z, "labels": labels})
        # what `gendeploy serve` prints for each model: the engine the model said it loaded
        said = {m: served_artifact(server.repo_dir, m, server.log_text()) for m in server.loaded}
    finally:
        server.stop()
    with OpenVINORunner(out / manifest.artifact("int8").path) as local:
        expected = local.run({"z": z, "labels": labels})
    assert served.shape == expected.shape
    assert np.abs(served - expected).max() <= 1e-5
    log = (tmp_path / "tritonserver.log").read_text()
    assert "tq_int8 runs on openvino" in log
    assert said["tq_int8"] == "artifact int8 (runs on OpenVINO)"
    assert said["tq"] == "artifact fp32 (runs on ONNX Runtime)"
