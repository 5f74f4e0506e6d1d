"""`gendeploy export --int8` and the quality gate, on real NNCF / OpenVINO / ONNX Runtime.

Proofs: the default preset's INT8 passes the gate (with the digits score); a generator hostile to
INT8 (one channel with 100x outliers) fails and is rescued by the layer-by-layer fallback, which
names the layer; a generator whose INT8 keeps a high PSNR but draws one image for every z is
stopped by the distribution check; bad input gets one line and publishes nothing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from gendeploy.cli import app
from gendeploy.errors import MissingDependencyError, QualityError, UsageError
from gendeploy.export import int8, onnx_graph
from gendeploy.export.api import export
from gendeploy.export.manifest import Manifest, Precision, load_manifest
from gendeploy.export.options import ExportOptions, ModelSpec
from gendeploy.export.quality_gate import (
    ModelFacts,
    QualityConfig,
    QualityGate,
    compare,
    seed_feeds,
)
from gendeploy.export.source import load_user_model
from gendeploy.fileio import cache_dir
from gendeploy.runtime.eager import EagerRunner
from gendeploy.runtime.onnxrt import OnnxRuntimeRunner
from gendeploy.runtime.openvino import OpenVINORunner
from gendeploy.trainer.config import DEFAULT_PRESET, PRESETS, with_overrides
from gendeploy.trainer.train import train

MODELS = Path(__file__).with_name("int8_models.py")
# The default preset trained for a fifth of its steps: the real architecture, recipe and digits
# data, a generator that draws digits (label accuracy well above chance), in ~30 s once per cache.
DEFAULT_PRESET_STEPS = 400


def user_model(name: str) -> ModelSpec:
    return ModelSpec(model=f"{MODELS}:{name}", latent_dim=16, image_shape=(1, 16, 16))


@pytest.fixture(scope="session")
def default_preset_checkpoint() -> Path:
    """The default preset, shortened to DEFAULT_PRESET_STEPS, trained once and cached."""
    model, config = with_overrides(
        PRESETS[DEFAULT_PRESET], steps=DEFAULT_PRESET_STEPS, sample_every=DEFAULT_PRESET_STEPS
    )
    digest = hashlib.sha256(repr((model, config)).encode()).hexdigest()[:12]
    key = f"{DEFAULT_PRESET}-{DEFAULT_PRESET_STEPS}-{digest}"
    run = cache_dir() / "test-runs" / key
    if not (run / "checkpoint.pt").is_file():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # robust on a shared machine (OpenMP threads stall when busy)
        try:
            train(model, config, run, force=True, progress=False)
        finally:
            torch.set_num_threads(threads)
    return run / "checkpoint.pt"


def test_default_preset_int8_passes_the_quality_gate_with_the_digits_score(
    default_preset_checkpoint: Path, tmp_path: Path
) -> None:
    manifest = export(
        ModelSpec(checkpoint=default_preset_checkpoint),
        ExportOptions(int8=True, output="uint8"),
        out=tmp_path / "export",
    )
    names = {a.name for a in manifest.artifacts}
    assert {"fp32", "uint8", "int8", "int8_uint8"} <= names
    artifact = manifest.artifact("int8")
    quality = artifact.validation["quality"]
    assert quality["passed"] and quality["seeds"] >= 1000
    assert quality["frechet_ratio"] <= 1.10
    assert quality["feature_space"].startswith("digits classifier")
    digits, fp32 = quality["digits"], quality["digits_fp32"]
    assert fp32["label_accuracy"] > 0.5  # a trained generator: it draws the digits it is asked for
    assert fp32["label_accuracy"] - digits["label_accuracy"] <= 0.005
    assert digits["frechet_ratio"] <= fp32["frechet_ratio"] * 1.05
    assert artifact.validation["runner"] == "openvino CPU (int8)"
    assert artifact.extra["executed"].get("int8", 0) > 0
    assert artifact.extra["calibration"]["samples"] == int8.DEFAULT_CALIBRATION_SAMPLES
    # the published file really is INT8 where the manifest says so, float where it says float
    published = onnx.load(str(tmp_path / "export" / "int8.onnx"))
    kept = [layer["onnx_node"] for layer in artifact.extra["float_layers"]]
    assert int8.float_layers(published) == kept
    assert manifest.artifact("int8_uint8").validation["quality"]["passed"]


def test_an_int8_hostile_generator_fails_and_the_fallback_keeps_its_layer_in_float(
    tmp_path: Path,
) -> None:
    manifest = export(user_model("HostileGenerator"), ExportOptions(int8=True), out=tmp_path / "e")
    artifact = manifest.artifact("int8")
    first = artifact.extra["fallback"][0]
    assert first["float_layers"] == [] and not first["passed"]  # every layer INT8: fails
    assert artifact.extra["float_layers"] == [{"onnx_node": "node_conv2d", "module": "last"}]
    assert artifact.validation["quality"]["passed"]
    published = onnx.load(str(tmp_path / "e" / "int8.onnx"))
    assert int8.float_layers(published) == ["node_conv2d"]
    assert len(int8.weighted_layers(published)) == 3  # the other two are INT8


def test_without_the_fallback_the_hostile_generator_is_refused_naming_the_metric(
    tmp_path: Path,
) -> None:
    loaded = load_user_model(f"{MODELS}:HostileGenerator", None, 16, 0, (1, 16, 16))
    path = tmp_path / "fp32.onnx"
    onnx_graph.export_fp32(loaded.module, path, 16, 0, 64)
    facts = ModelFacts(16, 0, (1, 16, 16))
    gate = QualityGate(EagerRunner(loaded.module).run, facts)

    def judge(model: onnx.ModelProto) -> object:
        onnx_graph.save(model, tmp_path / "int8.onnx")
        with OpenVINORunner(tmp_path / "int8.onnx") as runner:
            return gate.judge(runner.run, Precision.int8)

    items = int8.calibration_feeds(16, 0, 64)
    with pytest.raises(QualityError, match=r"per-seed PSNR: 1st percentile [\d.]+ dB < 25.0 dB"):
        int8.quantize_gated(onnx.load(str(path)), items, judge, print, fallback=False)  # type: ignore[arg-type]


def test_a_generator_whose_int8_draws_one_image_is_stopped_by_the_distribution_check(
    tmp_path: Path,
) -> None:
    manifest = export(
        user_model("CollapsingGenerator"), ExportOptions(int8=True), out=tmp_path / "e"
    )
    artifact = manifest.artifact("int8")
    quantized_everything = artifact.extra["fallback"][0]
    assert quantized_everything["float_layers"] == [] and not quantized_everything["passed"]
    # per seed it looked fine (far above the INT8 PSNR bounds of 25 / 30 dB)...
    assert quantized_everything["psnr_p1_db"] > 35
    # ...but it drew one image: only the distribution check refused it
    assert quantized_everything["frechet_ratio"] > 10
    [kept] = artifact.extra["float_layers"]
    assert kept["module"] == "mix" and kept["onnx_node"].startswith("node_Conv")

    # the collapse itself, measured: INT8 with every layer quantized has no diversity left
    loaded = load_user_model(f"{MODELS}:CollapsingGenerator", None, 16, 0, (1, 16, 16))
    path = tmp_path / "fp32.onnx"
    onnx_graph.export_fp32(loaded.module, path, 16, 0, 64)
    onnx_graph.save(int8.quantize(onnx.load(str(path)), int8.calibration_feeds(16, 0, 64)), path)
    feeds = seed_feeds(np.arange(200), 16, 0)
    with OpenVINORunner(path) as runner:
        images = runner.run(feeds)
    eager = EagerRunner(loaded.module).run(feeds)
    assert images.std(axis=0).mean() < 0.1 * eager.std(axis=0).mean()
    result = compare(EagerRunner(loaded.module).run, OpenVINORunner(path).run,
                     ModelFacts(16, 0, (1, 16, 16)), "int8")  # fmt: skip
    assert [f.split(":")[0] for f in result.failures] == ["distribution"]
    assert result.psnr.median_db > 30 and result.psnr.p1_db > 25


def test_identical_samples_score_exactly_one_and_the_gate_reports_every_figure() -> None:
    loaded = load_user_model(f"{MODELS}:HostileGenerator", None, 16, 0, (1, 16, 16))
    reference = EagerRunner(loaded.module).run
    result = compare(reference, reference, ModelFacts(16, 0, (1, 16, 16)), "fp16")
    assert result.passed and result.frechet_ratio == 1.0
    assert result.psnr.min_db == result.psnr.median_db == 100.0
    assert result.seeds == 1000 and "random-conv" in result.feature_space
    with pytest.raises(UsageError, match="at least 1000 seeds"):
        QualityConfig(seeds=100)


def test_the_tensorrt_source_is_signed_int8_and_draws_like_the_int8_artifact(
    tmp_path: Path,
) -> None:
    manifest = export(user_model("HostileGenerator"), ExportOptions(int8=True), out=tmp_path / "e")
    qdq = onnx.load(str(tmp_path / "e" / "int8.onnx"))
    signed = int8.signed_for_tensorrt(qdq)
    inits = {i.name: i for i in signed.graph.initializer}
    zero_points = [
        inits[n.input[2]].data_type
        for n in signed.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2
    ]
    assert zero_points and set(zero_points) == {onnx.TensorProto.INT8}
    onnx_graph.save(signed, tmp_path / "signed.onnx")
    loaded = load_user_model(f"{MODELS}:HostileGenerator", None, 16, 0, (1, 16, 16))
    result = compare(
        EagerRunner(loaded.module).run,
        OnnxRuntimeRunner(tmp_path / "signed.onnx").run,
        ModelFacts(16, 0, (1, 16, 16)),
        "int8",
    )
    assert result.passed, result.failures
    assert manifest.artifact("int8").extra["float_layers"]  # the same float layers carried over


def _gendeploy(args: list[str], prelude: str = "") -> subprocess.CompletedProcess[str]:
    """The real console entry point in a fresh interpreter (``prelude`` runs first)."""
    code = (
        f"import sys\n{prelude}\nfrom gendeploy.cli import main\nsys.argv[0] = 'gendeploy'\nmain()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )


HOSTILE = [
    "--model",
    f"{MODELS}:HostileGenerator",
    "--latent-dim",
    "16",
    "--image-shape",
    "1,16,16",
]


def test_int8_without_nncf_is_one_line_and_publishes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if not installed: import fails
    with pytest.raises(MissingDependencyError, match="--int8 needs nncf"):
        int8.require_int8_tools()
    out = tmp_path / "e"
    done = _gendeploy(
        ["export", *HOSTILE, "--int8", "--out", str(out)], "sys.modules['nncf'] = None"
    )
    assert done.returncode == MissingDependencyError.exit_code
    assert done.stderr.strip().splitlines() == [
        "error: --int8 needs nncf (post-training quantization with NNCF, run by OpenVINO): "
        "pip install nncf openvino (both are in gendeploy[cpu])"
    ]
    assert not out.exists()


def test_an_unscorable_generator_is_one_line_and_publishes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "e"
    model = ["--model", f"{MODELS}:IgnoresZ", "--latent-dim", "16", "--image-shape", "1,16,16"]
    done = _gendeploy(["export", *model, "--int8", "--out", str(out)])
    assert done.returncode == QualityError.exit_code
    [line] = done.stderr.strip().splitlines()
    # the export gate refuses it before the quality gate would (it has no noise floor either)
    assert line.startswith("error: the generator's output does not depend on z")
    assert not out.exists() and not list(tmp_path.glob(".gendeploy-staging-*"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--int8", "--calibration-samples", "0"], "--calibration-samples must be >= 1"),
        (["--calibration-samples", "64"], "--calibration-samples needs --int8"),
        (["--int8", "--max-frechet-ratio", "0.5"], "--max-frechet-ratio must be >= 1.0"),
    ],
)
def test_bad_int8_flags_are_one_line_before_any_work(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    out = tmp_path / "e"
    result = CliRunner().invoke(app, ["export", *HOSTILE, "--out", str(out), *flags])
    assert isinstance(result.exception, UsageError), result.output
    assert message in str(result.exception) and "\n" not in str(result.exception)
    assert not out.exists()


def test_the_manifest_records_calibration_float_layers_and_the_ir_decision(tmp_path: Path) -> None:
    export(
        user_model("HostileGenerator"),
        ExportOptions(int8=True, calibration_samples=64),
        out=tmp_path / "e",
    )
    manifest: Manifest = load_manifest(tmp_path / "e")
    raw = json.loads((tmp_path / "e" / "manifest.json").read_text())
    extra = manifest.artifact("int8").extra
    assert extra["calibration"]["samples"] == 64
    assert raw["options"]["calibration_samples"] == 64
    decision = extra["openvino_ir"]
    assert decision["kept"] == ("int8_ir" in {a.name for a in manifest.artifacts})
    assert decision["kept"] == (decision["ir_ms"] < 0.95 * decision["qdq_onnx_ms"])
    assert manifest.artifact("int8").precision is Precision.int8
