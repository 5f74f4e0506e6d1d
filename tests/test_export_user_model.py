"""User generators gendeploy did not write, exported from a file path; bad inputs -> one line."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import cli
from conftest import MakeCheckpoint
from safetensors.torch import save_file

from gendeploy.export.source import load_eager
from gendeploy.manifest import load_manifest
from gendeploy.runtime.eager import EagerRunner
from gendeploy.runtime.onnxrt import OnnxRuntimeRunner

USER_MODELS = '''
import torch
from torch import nn


class UpsampleDecoder(nn.Module):
    """Unconditional: linear stem, nearest/bilinear upsampling + conv, InstanceNorm."""

    def __init__(self, latent_dim: int = 12, channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(latent_dim, 16 * 4 * 4)
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(16, 8, 3, padding=1),
            nn.InstanceNorm2d(8, affine=True),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(8, channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(noise).view(-1, 16, 4, 4))


class TwoInputGenerator(nn.Module):
    """Conditional: the label embedding modulates the latent projection (not concatenated)."""

    def __init__(self, latent_dim: int = 10, classes: int = 5) -> None:
        super().__init__()
        self.project = nn.Linear(latent_dim, 32)
        self.embed = nn.Embedding(classes, 32)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(32, 2 * 6 * 6), nn.Tanh())

    def forward(self, noise: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = self.project(noise) * (1 + self.embed(label))
        return self.head(h).reshape(noise.shape[0], 2, 6, 6)


def conditional_factory() -> nn.Module:
    return TwoInputGenerator(latent_dim=10, classes=5)
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_models" / "generators.py"
    path.parent.mkdir()
    path.write_text(USER_MODELS)
    return path


def _load_user_module(user_file: Path, attr: str) -> torch.nn.Module:
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_models_for_weights", user_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(3)
    generator: torch.nn.Module = getattr(module, attr)()
    return generator


def test_unconditional_upsample_instancenorm_generator_from_a_file(
    user_file: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "decoder.safetensors"
    save_file(_load_user_module(user_file, "UpsampleDecoder").state_dict(), str(weights))
    out = tmp_path / "exports" / "decoder"
    code, stdout, stderr = cli(
        "export", "--model", f"{user_file}:UpsampleDecoder", "--weights", str(weights),
        "--latent-dim", "12", "--image-shape", "3,16,16", "--fp16", "--output", "uint8",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, stderr
    manifest = load_manifest(out)
    assert "gate passed fp16" in stdout
    if manifest.skipped:  # no TensorRT here: said once for both engines
        reason = manifest.skipped[0]["reason"]
        assert f"NOT built: trt_fp16, trt_fp16_uint8 ({reason})" in stdout
        assert stdout.count(reason) == 1
    assert manifest.name == "decoder" and manifest.source.kind == "user_model"
    assert manifest.artifact("uint8").output.shape == [-1, 16, 16, 3]
    feeds = {"z": np.random.default_rng(1).standard_normal((3, 12)).astype(np.float32)}
    expected = EagerRunner(load_eager(manifest)).run(feeds)
    np.testing.assert_allclose(OnnxRuntimeRunner(out / "fp32.onnx").run(feeds), expected, atol=1e-4)
    assert manifest.artifact("fp16").validation["psnr_db"] >= 40


def test_conditional_two_input_generator_from_a_factory_with_pt_weights(
    user_file: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "cond.pt"
    torch.save(_load_user_module(user_file, "conditional_factory").state_dict(), weights)
    out = tmp_path / "exports" / "cond"
    code, _, stderr = cli(
        "export", "--model", f"{user_file}:conditional_factory", "--weights", str(weights),
        "--latent-dim", "10", "--num-classes", "5", "--image-shape", "2,6,6", "--out", str(out),
        "--max-batch", "4",
    )  # fmt: skip
    assert code == 0, stderr
    manifest = load_manifest(out)
    assert [t.name for t in manifest.artifact("fp32").inputs] == ["z", "labels"]
    assert manifest.artifact("fp32").inputs[1].value_range == [0, 4]
    runner = OnnxRuntimeRunner(out / "fp32.onnx")
    assert runner.input_names == ["z", "labels"]
    feeds = {"z": np.ones((2, 10), np.float32), "labels": np.array([0, 4], np.int64)}
    images = runner.run(feeds)
    assert images.shape == (2, 2, 6, 6)
    assert not np.allclose(images[0], images[1])  # the label matters


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing/checkpoint.pt"], "checkpoint not found"),
        (["{foreign}"], "is not a gendeploy checkpoint (it holds Python objects"),
        (["--model", "{file}:NoSuchClass", "--latent-dim", "12", "--image-shape", "3,16,16"],
         "has no 'NoSuchClass'; nn.Module classes there: ['UpsampleDecoder', 'TwoInputGenerator']"),
        (["--model", "nowhere.py:Gen", "--latent-dim", "2", "--image-shape", "1,4,4"],
         "model file not found"),
        (["--model", "{file}", "--latent-dim", "2", "--image-shape", "1,4,4"],
         "expected path/to/file.py:ClassName"),
        (["--model", "{file}:UpsampleDecoder", "--image-shape", "3,16,16"], "--latent-dim"),
        (["--model", "{file}:UpsampleDecoder", "--latent-dim", "12", "--image-shape", "3x16"],
         "--image-shape must be C,H,W"),
        (["--model", "{file}:UpsampleDecoder", "--latent-dim", "12", "--image-shape", "3,32,32",
          "--random-weights"], "returns (2, 3, 16, 16) for batch 2, --image-shape says (3, 32"),
        (["--model", "{file}:UpsampleDecoder", "--latent-dim", "7", "--image-shape", "3,16,16",
          "--random-weights"], "fails on an unconditional (z) input with latent dim 7"),
        (["--model", "{file}:UpsampleDecoder", "--latent-dim", "12", "--image-shape", "3,16,16"],
         ": no weights; pass --weights FILE (.safetensors or .pt), --random-weights to export"),
        (["--model", "{file}:UpsampleDecoder", "--latent-dim", "12", "--image-shape", "3,16,16",
          "--weights", "{wrong}", "--random-weights"], "--weights and --random-weights contradict"),
        (["{ckpt}", "--random-weights"], "--random-weights: only with --model"),
        (["--model", "{file}:UpsampleDecoder", "--latent-dim", "12", "--image-shape", "3,16,16",
          "--weights", "{foreign}"], "refused to unpickle it safely"),
        (["--model", "{file}:UpsampleDecoder", "--latent-dim", "12", "--image-shape", "3,16,16",
          "--weights", "{foreign_torch}"], "it pickles pathlib.PosixPath"),
        (["--model", "{file}:UpsampleDecoder", "--latent-dim", "12", "--image-shape", "3,16,16",
          "--weights", "{wrong}"], "do not fit UpsampleDecoder"),
        (["{ckpt}", "--latent-dim", "4"], "--latent-dim: only with --model"),
        (["{ckpt}", "--require-engine"], "--require-engine needs --fp16"),
        (["{ckpt}", "--output", "png"], "'png' is not one of 'float', 'uint8'"),
        (["--model", "{file}:UpsampleDecoder", "--noise", "random"], "'random' is not one of"),
        (["{ckpt}", "--name", "a b"], "--name 'a b'"),
        (["{ckpt}", "--out", "{not_export}"], "is not a gendeploy export"),
    ],
)  # fmt: skip
def test_bad_inputs_get_one_line_errors_and_nonzero_exits(
    args: list[str],
    message: str,
    user_file: Path,
    tmp_path: Path,
    make_checkpoint: MakeCheckpoint,
) -> None:
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(pickle.dumps(Path("a pickled object, not tensors")))
    foreign_torch = tmp_path / "foreign_torch.pt"
    torch.save({"stem.weight": Path("not a tensor")}, foreign_torch)
    wrong = tmp_path / "wrong.pt"
    torch.save({"stem.weight": torch.zeros(3, 3)}, wrong)
    not_export = tmp_path / "notes"
    not_export.mkdir()
    (not_export / "todo.txt").write_text("mine")
    ckpt = make_checkpoint() if any("{ckpt}" in a for a in args) else ""
    fill = {"file": user_file, "foreign": foreign, "foreign_torch": foreign_torch, "wrong": wrong,
            "ckpt": ckpt, "not_export": not_export}  # fmt: skip
    code, _, stderr = cli("export", *(a.format(**fill) for a in args))
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0]
    assert (not_export / "todo.txt").read_text() == "mine"


def test_require_engine_fails_up_front_without_tensorrt(
    make_checkpoint: MakeCheckpoint, tmp_path: Path
) -> None:
    from gendeploy.runtime.tensorrt import tensorrt_availability

    if tensorrt_availability().ok:
        pytest.skip("TensorRT and CUDA are present here: --require-engine succeeds")
    out = tmp_path / "e"
    code, _, stderr = cli(
        "export", str(make_checkpoint()), "--fp16", "--require-engine", "--out", str(out)
    )
    assert code == 1 and "--require-engine: cannot build a TensorRT engine here" in stderr
    assert not out.exists()


def test_the_installed_command_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gendeploy", "export", str(tmp_path / "nope.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: checkpoint not found: {tmp_path / 'nope.pt'} (pass runs/<name>/checkpoint.pt)"
    ]


SELF_LOADING_PACKAGE = """
from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(__file__).with_name("generator.pt")


class TinyGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Linear(4, 64)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.project(z)).view(-1, 1, 8, 8)


def make() -> nn.Module:
    generator = TinyGenerator()
    generator.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return generator


make.gendeploy_loads_weights = True
"""


@pytest.fixture
def self_loading_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``selfload_pkg.generators:make``, importable, loading ``generator.pt`` beside it."""
    package = tmp_path / "site" / "selfload_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "generators.py").write_text(SELF_LOADING_PACKAGE)
    monkeypatch.syspath_prepend(str(package.parent))
    for name in ("selfload_pkg", "selfload_pkg.generators"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    _save_tiny_weights(package / "generator.pt", seed=1)
    return package


def _save_tiny_weights(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    torch.save({"project.weight": torch.randn(64, 4), "project.bias": torch.randn(64)}, path)


SELF_LOADING_ARGS = (
    "export", "--model", "selfload_pkg.generators:make", "--latent-dim", "4",
    "--image-shape", "1,8,8", "--max-batch", "4",
)  # fmt: skip


def test_a_factory_that_loads_its_own_weights_is_not_up_to_date_once_they_change(
    self_loading_package: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exports" / "selfload"
    args = (*SELF_LOADING_ARGS, "--out", str(out))
    code, _, stderr = cli(*args)
    assert code == 0, stderr
    code, stdout, _ = cli(*args)
    assert code == 0 and "up to date" in stdout  # nothing changed: a no-op

    _save_tiny_weights(self_loading_package / "generator.pt", seed=2)
    code, stdout, stderr = cli(*args)
    assert code == 2 and "up to date" not in stdout
    assert "holds another export (other source or options); --force replaces it" in stderr
    code, _, stderr = cli(*args, "--force")
    assert code == 0, stderr
    feeds = {"z": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    eager = EagerRunner(load_eager(load_manifest(out))).run(feeds)
    np.testing.assert_allclose(OnnxRuntimeRunner(out / "fp32.onnx").run(feeds), eager, atol=1e-5)


def test_a_change_to_the_code_of_a_package_model_is_not_up_to_date(
    self_loading_package: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exports" / "selfload"
    args = (*SELF_LOADING_ARGS, "--out", str(out))
    assert cli(*args)[0] == 0
    code_file = self_loading_package / "generators.py"
    code_file.write_text(code_file.read_text() + "\n# the forward pass is about to change\n")
    code, stdout, stderr = cli(*args)
    assert code == 2 and "up to date" not in stdout and "holds another export" in stderr


def test_random_weights_are_said_recorded_and_rebuilt_identically(
    user_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exports" / "random"
    code, _, stderr = cli(
        "export", "--model", f"{user_file}:UpsampleDecoder", "--latent-dim", "12",
        "--image-shape", "3,16,16", "--random-weights", "--max-batch", "4", "--out", str(out),
    )  # fmt: skip
    assert code == 0, stderr
    assert "warning: --random-weights: the export holds untrained weights" in stderr
    manifest = load_manifest(out)
    assert manifest.source.random_weights and manifest.source.weights == ""
    feeds = {"z": np.random.default_rng(2).standard_normal((2, 12)).astype(np.float32)}
    eager = EagerRunner(load_eager(manifest)).run(feeds)  # the same seeded initialisation
    np.testing.assert_allclose(OnnxRuntimeRunner(out / "fp32.onnx").run(feeds), eager, atol=1e-5)
