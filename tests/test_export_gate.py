"""The gate passes good models and fails broken ones with a named error, publishing nothing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from gendeploy.errors import (
    BatchInvarianceError,
    NameMismatchError,
    RenderingError,
    ShapeMismatchError,
    ToleranceError,
    ValidationError,
)
from gendeploy.export import gate, onnx_graph
from gendeploy.export.api import export
from gendeploy.export.options import ExportOptions, ModelSpec
from gendeploy.export.source import LoadedModel, make_artifact
from gendeploy.manifest import PLAN, Precision
from gendeploy.runtime.onnxrt import OnnxRuntimeRunner

BROKEN_MODELS = '''
import torch
from torch import nn


def decoder(norm: nn.Module, extra: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(6, 8 * 4 * 4), nn.Unflatten(1, (8, 4, 4)),
        nn.Upsample(scale_factor=2), nn.Conv2d(8, 8, 3, padding=1), norm, nn.ReLU(),
        extra, nn.Conv2d(8, 1, 3, padding=1), nn.Tanh(),
    )


class TrainingBatchNorm(nn.Module):
    """BatchNorm without running statistics: normalises with the batch's own statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.net = decoder(nn.BatchNorm2d(8, track_running_stats=False), nn.Identity())

    def forward(self, z):
        return self.net(z)


class MakesNaN(nn.Module):
    def forward(self, x):
        return torch.sqrt(x - 1e3)


class NaNGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = decoder(nn.InstanceNorm2d(8), MakesNaN())

    def forward(self, z):
        return self.net(z)
'''


@pytest.fixture
def broken_file(tmp_path: Path) -> Path:
    path = tmp_path / "broken.py"
    path.write_text(BROKEN_MODELS)
    return path


def _spec(path: Path, cls: str) -> ModelSpec:
    return ModelSpec(
        model=f"{path}:{cls}", latent_dim=6, image_shape=(1, 8, 8), random_weights=True
    )


def test_training_mode_batchnorm_fails_batch_invariance_and_says_so(
    broken_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exports" / "bn"
    with pytest.raises(ValidationError, match=r"batch invariant.*BatchNorm.*training mode"):
        export(_spec(broken_file, "TrainingBatchNorm"), out=out)
    assert list(out.parent.iterdir()) == []  # nothing published, no staging left


def test_an_eval_mode_generator_with_one_batchnorm_in_training_mode_fails_the_gate() -> None:
    """The export loader calls .eval(); this is the model that slips past it (a BN switched back
    to training mode), caught by the gate itself."""
    from conftest import TINY_CONDITIONAL_DCGAN

    from gendeploy.trainer.models import build_generator

    torch.manual_seed(0)
    generator = build_generator(TINY_CONDITIONAL_DCGAN).eval()
    gate.eager_reference(generator, 16, 4, max_batch=8)  # eval mode: passes
    bn = next(m for m in generator.modules() if isinstance(m, nn.BatchNorm2d))
    bn.train()
    with pytest.raises(
        BatchInvarianceError, match=r"not batch invariant.*BatchNorm.*training mode"
    ):
        gate.eager_reference(generator, 16, 4, max_batch=8)


def test_a_layer_that_makes_nan_fails_the_gate_naming_the_layer(
    broken_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exports" / "nan"
    with pytest.raises(ValidationError, match=r"NaN.*layer 'net\.6'"):
        export(_spec(broken_file, "NaNGenerator"), out=out)
    assert list(out.parent.iterdir()) == []


def _tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 64), nn.Tanh(), nn.Unflatten(1, (1, 8, 8))
    ).eval()


def _loaded(module: nn.Module) -> LoadedModel:
    from gendeploy.manifest import Source

    return LoadedModel(module, 6, 0, (1, 8, 8), Source("user_model", "x:y", ""), "tiny")


def test_an_onnx_that_does_not_match_its_model_fails_on_values(tmp_path: Path) -> None:
    model, other = _tiny(0), _tiny(1)
    path = tmp_path / "other.onnx"
    onnx_graph.export_fp32(other, path, latent_dim=6, num_classes=0, max_batch=8)
    reference = gate.eager_reference(model, 6, 0, max_batch=8)
    artifact = make_artifact(_loaded(model), PLAN["fp32"], path.name)
    with pytest.raises(ToleranceError, match=r"'fp32': values: max abs difference .* > 0\.0001"):
        gate.validate(OnnxRuntimeRunner(path), artifact, reference, max_batch=8)
    # the very same file passes against its own model
    own = gate.eager_reference(other, 6, 0, max_batch=8)
    figures = gate.validate(OnnxRuntimeRunner(path), artifact, own, max_batch=8)
    assert figures["passed"] and figures["max_abs_diff"] < 1e-5


def test_an_onnx_with_wrong_names_or_shapes_fails_before_values(tmp_path: Path) -> None:
    model = _tiny(0)
    path = tmp_path / "m.onnx"
    onnx_graph.export_fp32(model, path, latent_dim=6, num_classes=0, max_batch=8)
    reference = gate.eager_reference(model, 6, 0, max_batch=8)
    uint8 = make_artifact(_loaded(model), PLAN["uint8"], path.name)
    with pytest.raises(ShapeMismatchError, match=r"'uint8': shape: got float32\[8, 1, 8, 8\]"):
        gate.validate(OnnxRuntimeRunner(path), uint8, reference, max_batch=8)
    conditional = make_artifact(
        LoadedModel(model, 6, 3, (1, 8, 8), _loaded(model).source, "c"),
        PLAN["fp32"],
        path.name,
    )
    with pytest.raises(NameMismatchError, match=r"names: inputs \['z'\]"):
        gate.validate(OnnxRuntimeRunner(path), conditional, reference, max_batch=8)


def test_uint8_rendering_and_psnr_figures() -> None:
    images = np.array([-1.0, -0.999, 0.0, 0.5, 1.0, 1.2], np.float32).reshape(1, 1, 1, 6)
    assert gate.render(images).ravel().tolist() == [0, 0, 128, 191, 255, 255]
    a = np.zeros((1, 4, 4, 1), np.uint8)
    assert gate.psnr(a, a) == gate.PSNR_IDENTICAL
    assert gate.psnr(a, a + 1) == pytest.approx(48.13, abs=0.01)


def test_gate_inputs_cover_every_label_with_fixed_seeds() -> None:
    first, second = gate.gate_inputs(latent_dim=4, num_classes=12)
    assert set(first["labels"].tolist()) == set(range(12))
    again, _ = gate.gate_inputs(latent_dim=4, num_classes=12)
    np.testing.assert_array_equal(first["z"], again["z"])
    assert not np.array_equal(first["z"], second["z"])


def test_fp16_tolerance_is_looser_than_fp32_but_bounded() -> None:
    fp32, fp16 = gate.TOLERANCES[Precision.fp32], gate.TOLERANCES[Precision.fp16]
    assert fp32.max_abs is not None and fp32.max_abs <= 1e-4 and fp16.min_psnr_db >= 40
    assert fp16.max_levels > fp32.max_levels == 1
    # reduced precisions are judged by their pictures, never by a raw tensor tolerance
    bf16, int8 = gate.TOLERANCES[Precision.bf16], gate.TOLERANCES[Precision.int8]
    assert fp16.max_abs is None and bf16.max_abs is None and int8.max_abs is None
    assert fp16.max_levels < bf16.max_levels <= int8.max_levels < 128
    # a graph quantized per sample gives the same integers at any batch
    assert int8.batch_levels == fp32.batch_levels == 1


def test_export_options_are_checked_before_heavy_work() -> None:
    from gendeploy.errors import UsageError

    with pytest.raises(UsageError, match="--require-engine needs --fp16"):
        ExportOptions(require_engine=True)
    with pytest.raises(UsageError, match="--opt-batch"):
        ExportOptions(max_batch=4, opt_batch=8)


def test_a_uint8_head_must_be_within_one_level_of_its_float_graphs_rendering(
    tmp_path: Path,
) -> None:
    model = _tiny(0)
    fp32 = tmp_path / "fp32.onnx"
    onnx_graph.export_fp32(model, fp32, latent_dim=6, num_classes=0, max_batch=8)
    fp16 = onnx_graph.convert_fp16(onnx.load(str(fp32)))
    onnx_graph.save(fp16, tmp_path / "fp16.onnx")
    onnx_graph.save(onnx_graph.add_uint8_head(fp16), tmp_path / "fp16_uint8.onnx")
    reference = gate.eager_reference(model, 6, 0, max_batch=8)
    float_outputs = gate.outputs(OnnxRuntimeRunner(tmp_path / "fp16.onnx"), reference, 8)
    head = make_artifact(_loaded(model), PLAN["fp16_uint8"])
    runner = OnnxRuntimeRunner(tmp_path / "fp16_uint8.onnx")
    figures = gate.validate(runner, head, reference, 8, float_outputs)
    assert figures["passed"] and figures["head_level_diff"] <= 1
    # float outputs 2 levels away (within fp16's 4 levels of eager) are not what the head renders
    shifted = [np.clip(o + 2 / 127.5, -1, 1) for o in float_outputs]
    with pytest.raises(RenderingError, match=r"'fp16_uint8': uint8 head: .* by [23] levels"):
        gate.validate(runner, head, reference, 8, shifted)


def test_the_cli_on_a_failed_gate_exits_1_with_one_error_line_and_creates_nothing(
    broken_file: Path, tmp_path: Path
) -> None:
    from cli_support import cli

    out = tmp_path / "exports" / "bn"
    code, _, stderr = cli(
        "export",
        "--model",
        f"{broken_file}:TrainingBatchNorm",
        "--latent-dim",
        "6",
        "--image-shape",
        "1,8,8",
        "--random-weights",
        "--out",
        str(out),
    )
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert re.search(r"differs by \d[\d.e-]* between batch 1 and batch \d", errors[0])
    assert "training mode" in errors[0]
    assert not out.exists() and list(out.parent.iterdir()) == []
