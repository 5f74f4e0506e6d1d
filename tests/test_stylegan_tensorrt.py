"""The GPU path for StyleGAN-class generators: TensorRT FP16 engines (real FP16 arithmetic) built
from FP16 ONNX with FP32 islands, with a dynamic batch, gated against eager.

Runs only where TensorRT and a CUDA device exist (``make gpu-check`` runs the tests marked gpu);
elsewhere each test is skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import stylegan_models as sm
import torch

from gendeploy.export.gate import TOLERANCES, render
from gendeploy.export.inmemory import export_generator
from gendeploy.export.signature import serving_module
from gendeploy.manifest import Precision
from gendeploy.runtime.eager import EagerRunner
from gendeploy.runtime.tensorrt import TensorRTRunner, tensorrt_availability
from gendeploy.seeds import draw_latents

_trt = tensorrt_availability()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _trt.ok, reason=f"needs TensorRT + CUDA: {_trt.reason}"),
]


@pytest.mark.parametrize("model", [sm.Truncated, sm.PerSampleToRGB, sm.Overflowing])
def test_engines_of_rewritten_generators_take_any_batch_and_pass_the_gate(
    model: type[torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    module = model()
    out = tmp_path / "e"
    manifest = export_generator(
        module,
        latent_dim=sm.LATENT,
        image_shape=(3, 8, 8),
        out=out,
        fp16=True,
        require_engine=True,
        max_batch=16,
        opt_batch=4,
    )
    engine = manifest.artifact("trt_fp16")
    assert engine.validation["passed"]
    if model is sm.Overflowing:  # the engine was built from the FP16 ONNX with its islands
        assert manifest.artifact("fp16").extra["fp32_layers"]
    eager = EagerRunner(serving_module(module, manifest.interface, 0))
    with TensorRTRunner(out / engine.path) as runner:
        # psi: the default and both ends of what the server accepts (real FP16 arithmetic)
        for psi in [0.8, *manifest.interface.truncation_range]:
            for batch in (1, 3, 16):
                feeds = {"z": draw_latents(list(range(batch)), sm.LATENT)}
                if manifest.interface.truncation_arg:
                    feeds["truncation"] = np.full((batch, 1), psi, np.float32)
                out = runner.run(feeds)
                assert np.isfinite(out).all(), (psi, batch)
                # FP16 is judged by its pictures: the worst pixel of the renderings, in levels
                moved = render(out).astype(np.int16) - render(eager.run(feeds))
                levels = int(np.abs(moved).max())
                assert levels <= TOLERANCES[Precision.fp16].max_levels, (psi, batch, levels)
