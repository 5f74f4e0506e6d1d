"""Runners: eager and ONNX Runtime agree; optional backends say why they cannot run here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONDITIONAL_DCGAN, MakeCheckpoint

from gendeploy.errors import ExportError, MissingDependencyError
from gendeploy.export.api import export
from gendeploy.export.options import ExportOptions, ModelSpec
from gendeploy.export.source import load_eager
from gendeploy.manifest import load_manifest
from gendeploy.runtime.eager import EagerRunner
from gendeploy.runtime.onnxrt import OnnxRuntimeRunner, providers
from gendeploy.runtime.tensorrt import TensorRTRunner, tensorrt_availability


def _feeds(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "z": rng.standard_normal((n, TINY_CONDITIONAL_DCGAN.latent_dim)).astype(np.float32),
        "labels": (np.arange(n) % TINY_CONDITIONAL_DCGAN.num_classes).astype(np.int64),
    }


def test_eager_and_onnxruntime_runners_agree_with_pinned_threads(
    make_checkpoint: MakeCheckpoint, tmp_path: Path
) -> None:
    out = tmp_path / "e"
    export(ModelSpec(checkpoint=make_checkpoint()), ExportOptions(fp16=True), out=out)
    manifest = load_manifest(out)
    feeds = _feeds(6)
    threads = torch.get_num_threads()
    try:
        with EagerRunner(load_eager(manifest), threads=1) as eager:
            expected = eager.run(feeds)
    finally:
        torch.set_num_threads(threads)
    with OnnxRuntimeRunner(manifest.artifact_path("fp32", out), threads=1) as ort:
        assert ort.input_names == ["z", "labels"] and ort.output_names == ["images"]
        assert ort.providers == ["CPUExecutionProvider"]
        np.testing.assert_allclose(ort.run(feeds), expected, atol=1e-4)
    with OnnxRuntimeRunner(manifest.artifact_path("fp16", out)) as ort16:
        images = ort16.run(feeds)
    assert images.dtype == np.float32  # FP32 I/O around FP16 weights
    assert np.abs(images - expected).max() < 3e-2


def test_onnxruntime_runner_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="ONNX Runtime cannot load"):
        OnnxRuntimeRunner(bad)
    with pytest.raises(MissingDependencyError, match="NoSuchExecutionProvider"):
        OnnxRuntimeRunner(bad, providers=["NoSuchExecutionProvider"])


def test_a_backend_that_cannot_run_here_says_why() -> None:
    assert "CPUExecutionProvider" in providers()
    trt = tensorrt_availability()
    if not trt.ok:
        assert trt.reason.startswith(("tensorrt not installed", "tensorrt does not", "no CUDA"))
        with pytest.raises(MissingDependencyError, match=trt.reason):
            TensorRTRunner("engine.plan")


# The engine inspector's JSON at ProfilingVerbosity.DETAILED, as TensorRT's documentation shows
# it (a fused INT8 convolution, a reformat, an FP16 deconvolution, a layer-names-only entry)
INSPECTOR_JSON = """{"Layers": [
 {"Name": "conv0 + relu0", "LayerType": "CaskConvolution",
  "Inputs": [{"Name": "x", "Dimensions": [16,512,28,28],
              "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format."}],
  "Outputs": [{"Name": "y",
               "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format."}],
  "ParameterType": "Convolution"},
 {"Name": "Reformatting CopyNode", "LayerType": "Reformat",
  "Inputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32 format"}]},
 {"Name": "up1", "LayerType": "CaskDeconvolution",
  "Inputs": [{"Name": "y2", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
  "ParameterType": "Deconvolution"},
 {"Name": "proj", "LayerType": "gemm", "Inputs": [{"Name": "z", "Format/Datatype": "Float"}]},
 "a layer name only"
], "Bindings": ["x", "images"]}"""


def test_tensorrt_precision_is_read_from_the_engine_inspectors_layers() -> None:
    """The parser of what a TensorRT engine runs (its runner's precision; the engines themselves
    run in tests marked gpu): weighted layers by their input datatype, reformats not counted."""
    from gendeploy.runtime.base import executed_precision
    from gendeploy.runtime.tensorrt import layer_precisions

    counts = layer_precisions(INSPECTOR_JSON)
    assert counts == {"int8": 1, "fp16": 1, "fp32": 1}
    assert executed_precision({"int8": 3, "fp32": 1}) == "int8+fp32"
    # an engine built without DETAILED verbosity shows names only: nothing is claimed
    assert layer_precisions('{"Layers": ["conv0", "up1"], "Bindings": []}') == {}
    assert executed_precision({}, default="unknown") == "unknown"
