"""Image-to-image export (issue 19): the probe, the manifest, the gate at several shapes, every
precision on the four published architectures (tiny, fitted a few steps) and the trainer's
upscaler, each from the source a user has: ``--model`` with ``--weights``, a published state
dict, a digits-sr4x checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from image_models import PROOF_MODELS, ProofModel, fitted_weights

from gendeploy.errors import PictureQualityError, UsageError
from gendeploy.export.api import export
from gendeploy.export.image_gate import ImageQualityGate, digits_mosaics, image_reference
from gendeploy.export.image_probe import gate_shapes
from gendeploy.export.options import ExportOptions, ModelSpec
from gendeploy.export.source import load_eager, load_spec
from gendeploy.manifest import INPUT_IMAGES, OutputKind, load_manifest
from gendeploy.runtime.onnxrt import OnnxRuntimeRunner
from gendeploy.runtime.openvino import OpenVINORunner
from gendeploy.testimages import synthetic_images
from gendeploy.tiling import to_model
from gendeploy.trainer.checkpoint import load_checkpoint, save_checkpoint
from gendeploy.trainer.config import Arch, ModelConfig

SR_CONFIG = ModelConfig(arch=Arch.srgan, image_size=32, scale=4, width=8, blocks=1)


class Fitted(dict[str, Path]):
    """Each proof model's fitted weights, fitted on first use."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    def __missing__(self, name: str) -> Path:
        self[name] = fitted_weights(PROOF_MODELS[name], self.out / f"{name}.safetensors")
        return self[name]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return Fitted(tmp_path_factory.mktemp("weights"))


def spec(proof: ProofModel, weights: dict[str, Path]) -> ModelSpec:
    return ModelSpec(model=proof.factory, weights=weights[proof.name])


def eager_on(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


def test_the_probe_finds_each_architectures_scale_and_size_constraints() -> None:
    found = {}
    for proof in PROOF_MODELS.values():
        image = load_spec(ModelSpec(model=proof.factory, random_weights=True)).image
        assert image is not None
        found[proof.name] = (image.scale, image.size_multiple, image.min_side)
    # U-Net: 2**5; CycleGAN: reflection pads need 8, transposed convolutions a multiple of 4
    assert found == {"rrdbnet": (4, 1, 1), "srvgg": (4, 1, 1), "unet": (1, 32, 32),
                     "cyclegan": (1, 4, 8)}  # fmt: skip


@pytest.mark.parametrize("name", ["srvgg", "unet", "cyclegan"])
def test_every_precision_exports_and_matches_eager_at_non_square_shapes_and_batches(
    name: str, weights: dict[str, Path], tmp_path: Path
) -> None:
    proof = PROOF_MODELS[name]
    options = ExportOptions(fp16=True, int8=True, max_batch=8, tile=32)
    manifest = export(spec(proof, weights), options, out=tmp_path / "e")
    assert {a.name for a in manifest.artifacts} >= {"fp32", "fp16", "int8"}
    assert manifest.image is not None and manifest.schema_version == 2
    fp32 = manifest.artifact("fp32")
    assert fp32.inputs[0].shape == [-1, 3, -1, -1] and fp32.output.shape == [-1, 3, -1, -1]
    module = load_eager(manifest)
    m = proof.multiple
    for batch, (h, w) in (
        (1, (2 * m if m > 1 else 13, 3 * m if m > 1 else 29)),
        (3, (4 * m, m * 2 if m > 1 else 17)),
    ):
        x = to_model(synthetic_images(batch, h, w, 3, first_seed=7))
        want = eager_on(module, x)
        assert want.shape == (batch, 3, proof.scale * h, proof.scale * w)
        with OnnxRuntimeRunner(tmp_path / "e" / "fp32.onnx") as ort:
            assert np.abs(ort.run({INPUT_IMAGES: x}) - want).max() < 1e-4
        with OnnxRuntimeRunner(tmp_path / "e" / "fp16.onnx") as ort:
            half = ort.run({INPUT_IMAGES: x})  # float IO, FP16 inside
            assert half.shape == want.shape and np.abs(half - want).max() < 0.05
        with OpenVINORunner(tmp_path / "e" / "int8.onnx") as ov:
            assert ov.precision.startswith("int8")
            got = ov.run({INPUT_IMAGES: x})
            assert got.shape == want.shape and np.abs(got - want).mean() < 0.05
    quality = manifest.artifact("int8").validation["quality"]
    assert quality["passed"] and quality["psnr"]["min_db"] >= 30
    assert manifest.artifact("int8").extra["calibration"]["inputs"].startswith("synthetic")


@pytest.mark.slow  # RRDBNet's dense blocks: about a minute here
def test_a_published_state_dict_exports_through_load_image_model(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    published = tmp_path / "RealESRGAN_tiny_x4.pth"  # as BasicSR saves it: under params_ema
    torch.save({"params_ema": load_file(weights["rrdbnet"])}, published)
    options = ExportOptions(fp16=True, int8=True, max_batch=4, tile=16)
    manifest = export(ModelSpec(checkpoint=published), options, out=tmp_path / "e")
    assert manifest.name == "RealESRGAN_tiny_x4" and manifest.source.kind == "image_checkpoint"
    image = manifest.image
    assert image is not None and (image.arch, image.value_range) == ("RRDBNet", [0.0, 1.0])
    # 32 convolutions at the input's size, 4 more at 2x and 4x: 33.25 input pixels
    assert image.loaded_by == "gendeploy.archs" and image.receptive_field == 34
    assert {a.name for a in manifest.artifacts} >= {"fp32", "fp16", "int8"}
    module = load_eager(manifest)
    for x in (to_model(synthetic_images(2, 11, 19, 3)), to_model(synthetic_images(1, 24, 8, 3))):
        want = eager_on(module, x)  # odd and non-square, batch 2; non-square, batch 1
        with OnnxRuntimeRunner(tmp_path / "e" / "fp32.onnx") as ort:
            assert np.abs(ort.run({INPUT_IMAGES: x}) - want).max() < 1e-4
        with OnnxRuntimeRunner(tmp_path / "e" / "fp16.onnx") as ort:
            assert np.abs(ort.run({INPUT_IMAGES: x}) - want).max() < 0.05
        with OpenVINORunner(tmp_path / "e" / "int8.onnx") as ov:
            got = ov.run({INPUT_IMAGES: x})
            assert got.shape == want.shape and np.abs(got - want).mean() < 0.05


def test_a_digits_sr4x_checkpoint_exports_gated_on_digit_scans(
    make_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    checkpoint = make_checkpoint(SR_CONFIG, run="digits-sr4x")
    trained = replace(load_checkpoint(checkpoint), train_config={"dataset": "digits",
                                                                 "input_blur": 1.0})  # fmt: skip
    save_checkpoint(trained, checkpoint)  # as the digits-sr4x preset records its data
    options = ExportOptions(tile=24, max_batch=8, fp16=True, int8=True)
    manifest = export(ModelSpec(checkpoint=checkpoint), options, out=tmp_path / "e")
    image = manifest.image
    assert image is not None and manifest.name == "digits-sr4x" and image.test_set == "digits"
    # 5 convolutions at the input's size: the head, one residual block's two, the body's, the
    # one into the sub-pixel maps
    assert (image.scale, image.in_channels, image.receptive_field) == (4, 1, 5)
    assert image.tile.size == 24 and image.tile.margin == 5 and image.tile.tiled
    assert image.tile.max_level_diff <= 1
    # square, non-square, odd, and one window: the largest a model call gets
    assert image.gate_shapes == [[24, 24], [24, 37], [25, 31], [34, 34]]
    assert manifest.artifact("fp32").validation["passed"]
    on_disk = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert on_disk["image"]["tile"]["checked_shape"] == [167, 171]
    # FP32, FP16 and INT8 against eager: non-square, odd, batch 1 and 3
    assert {a.name for a in manifest.artifacts} >= {"fp32", "fp16", "int8"}
    module = load_eager(manifest)
    for batch, (h, w) in ((1, (9, 20)), (3, (16, 11))):
        x = to_model(digits_mosaics(h, w, 1, batch, seed=3, blur=1.0))
        want = eager_on(module, x)
        assert want.shape == (batch, 1, 4 * h, 4 * w)
        limits = {"fp32.onnx": 1e-4, "fp16.onnx": 0.05}
        for file, limit in limits.items():
            with OnnxRuntimeRunner(tmp_path / "e" / file) as ort:
                assert np.abs(ort.run({INPUT_IMAGES: x}) - want).max() < limit, file
        with OpenVINORunner(tmp_path / "e" / "int8.onnx") as ov:
            assert np.abs(ov.run({INPUT_IMAGES: x}) - want).mean() < 0.05
    assert manifest.artifact("int8").extra["calibration"]["inputs"].startswith("digits")


def test_an_image_model_refuses_flags_it_cannot_honour_with_one_line(
    make_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    checkpoint = make_checkpoint(SR_CONFIG)
    with pytest.raises(UsageError, match="--output uint8: an image-to-image export"):
        export(
            ModelSpec(checkpoint=checkpoint), ExportOptions(output=OutputKind.uint8), out=tmp_path
        )
    with pytest.raises(UsageError, match="--in-channels: only for an image-to-image --model"):
        ModelSpec(checkpoint=checkpoint, in_channels=3)
    with pytest.raises(UsageError, match=r"--scale 2: .* returns images 4 x"):
        load_spec(ModelSpec(model=PROOF_MODELS["srvgg"].factory, random_weights=True, scale=2))
    with pytest.raises(UsageError, match="not an image-to-image model"):
        load_spec(ModelSpec(module=torch.nn.Flatten()))


def test_a_norm_over_the_whole_image_is_not_tiled_and_says_why(
    weights: dict[str, Path],
) -> None:
    loaded = load_spec(spec(PROOF_MODELS["cyclegan"], weights))
    from gendeploy.export.image_gate import prepare

    _, _, image = prepare(loaded, tile=16, margin=None, max_batch=4, reduced=False)
    assert image.receptive_field is None and not image.tile.tiled
    assert image.tile.max_level_diff > 1 and "not tiled" in image.tile.why
    assert image.geometry().refusal(200, 10) is not None  # larger than one window: refused
    assert image.geometry().refusal(16 + 2 * image.tile.margin, 10) is None


def test_the_image_quality_gate_refuses_what_looks_different_from_fp32(
    make_checkpoint: Callable[..., Path],
) -> None:
    loaded = load_spec(ModelSpec(checkpoint=make_checkpoint(SR_CONFIG)))
    assert loaded.image is not None
    from gendeploy.export.image_probe import choose_tile

    tile = choose_tile(loaded.module, loaded.image, synthetic_images(1, 40, 40, 1)[0], 16, None)
    reference = image_reference(loaded.module, loaded.image, gate_shapes(loaded.image, tile), 8)
    gate = ImageQualityGate(reference, batch=4)

    def fp32(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return eager_on(loaded.module, feeds[INPUT_IMAGES])

    def noisy(feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = fp32(feeds)
        return out + np.random.default_rng(0).normal(0, 0.05, out.shape).astype(np.float32)

    assert gate.judge(fp32, "int8").passed
    verdict = gate.judge(noisy, "fp16")
    assert not verdict.passed and verdict.psnr.min_db < 40
    with pytest.raises(PictureQualityError, match="per-image PSNR: min"):
        verdict.check("fp16")


def test_a_version_1_manifest_is_still_read(make_checkpoint: Callable[..., Path],
                                            tmp_path: Path) -> None:  # fmt: skip
    from conftest import TINY_MLP

    export(ModelSpec(checkpoint=make_checkpoint(TINY_MLP)), ExportOptions(max_batch=4),
           out=tmp_path / "e")  # fmt: skip
    path = tmp_path / "e" / "manifest.json"
    data = json.loads(path.read_text())
    del data["image"]
    path.write_text(json.dumps({**data, "schema_version": 1}))
    manifest = load_manifest(tmp_path / "e")
    assert manifest.schema_version == 1 and manifest.image is None
