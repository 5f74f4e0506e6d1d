"""The GPU path: TensorRT FP16 engines built from the FP16 ONNX, INT8 engines from the QDQ ONNX,
gated against eager.

Runs only where TensorRT and a CUDA device exist (``make gpu-check`` runs the same on the
default DCGAN-64); elsewhere each test is skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CONDITIONAL_DCGAN, MakeCheckpoint

from gendeploy.export.api import export
from gendeploy.export.gate import TOLERANCES, render
from gendeploy.export.options import ExportOptions, ModelSpec
from gendeploy.export.source import load_eager
from gendeploy.manifest import ArtifactKind, Precision, load_manifest
from gendeploy.runtime.eager import EagerRunner
from gendeploy.runtime.tensorrt import TensorRTRunner, tensorrt_availability

_trt = tensorrt_availability()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _trt.ok, reason=f"needs TensorRT + CUDA: {_trt.reason}"),
]


def levels(images: np.ndarray, expected: np.ndarray) -> int:
    """The worst pixel's difference between two float image batches' uint8 renderings (reduced
    precisions are judged by their pictures)."""
    return int(np.abs(render(images).astype(np.int16) - render(expected)).max())


def test_require_engine_builds_a_gated_strongly_typed_fp16_engine(
    make_checkpoint: MakeCheckpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "e"
    options = ExportOptions(fp16=True, output="uint8", max_batch=16, opt_batch=4,
                            require_engine=True)  # fmt: skip
    export(ModelSpec(checkpoint=make_checkpoint()), options, out=out)
    manifest = load_manifest(out)
    assert manifest.skipped == []
    engine = manifest.artifact("trt_fp16")
    assert engine.kind is ArtifactKind.tensorrt and engine.precision is Precision.fp16
    assert engine.validation["passed"] and engine.validation["psnr_db"] >= 40
    assert engine.extra["profile"] == {"min": 1, "opt": 4, "max": 16}
    assert engine.extra["gpu"] and engine.extra["compute_capability"]
    assert engine.extra["strongly_typed"]
    # read back from the engine (inspector), not stated: its weighted layers run FP16
    assert engine.extra["executed"].get("fp16", 0) > 0
    assert engine.validation["runner"].startswith("tensorrt (fp16")
    assert manifest.versions["tensorrt"] == engine.extra["tensorrt"]
    assert Path(engine.extra["timing_cache"]).is_file()
    assert manifest.artifact("trt_fp16_uint8").output.dtype == "uint8"

    feeds = {
        "z": np.random.default_rng(2).standard_normal((16, 16)).astype(np.float32),
        "labels": (np.arange(16) % TINY_CONDITIONAL_DCGAN.num_classes).astype(np.int64),
    }
    expected = EagerRunner(load_eager(manifest)).run(feeds)
    with TensorRTRunner(out / engine.path) as runner:
        for batch in (1, 7, 16):
            part = {k: v[:batch] for k, v in feeds.items()}
            images = runner.run(part)
            assert images.shape == (batch, 1, 32, 32)
            assert levels(images, expected[:batch]) <= TOLERANCES[Precision.fp16].max_levels


def test_int8_builds_a_gated_explicit_int8_engine_from_the_qdq_onnx(
    make_checkpoint: MakeCheckpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "e"
    options = ExportOptions(int8=True, output="uint8", max_batch=16, opt_batch=4,
                            require_engine=True)  # fmt: skip
    export(ModelSpec(checkpoint=make_checkpoint()), options, out=out)
    manifest = load_manifest(out)
    engine = manifest.artifact("trt_int8")
    assert engine.kind is ArtifactKind.tensorrt and engine.precision is Precision.int8
    assert engine.validation["passed"] and engine.validation["quality"]["passed"]
    assert "signed INT8" in engine.extra["source_onnx"]
    assert manifest.artifact("trt_int8_uint8").output.dtype == "uint8"
    feeds = {
        "z": np.random.default_rng(2).standard_normal((8, 16)).astype(np.float32),
        "labels": (np.arange(8) % TINY_CONDITIONAL_DCGAN.num_classes).astype(np.int64),
    }
    expected = EagerRunner(load_eager(manifest)).run(feeds)
    with TensorRTRunner(out / engine.path) as runner:
        images = runner.run(feeds)
        # the engine inspector shows its weighted layers in INT8 (as the manifest recorded)
        assert runner.layer_precisions == engine.extra["executed"]
        assert runner.layer_precisions.get("int8", 0) > 0 and "int8" in runner.precision
    assert levels(images, expected) <= TOLERANCES[Precision.int8].max_levels
