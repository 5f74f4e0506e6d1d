"""The pieces under the StyleGAN tests, each on its own: the rewritten convolution forms, the
served signature's parsing, the seeded noise RNG and request checks, the Triton configs of an
export with truncation and noise, and ``gendeploy.export_generator`` on a module in memory."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import stylegan_models as sm
import torch
import torch.nn.functional as F
from google.protobuf import json_format

import gendeploy
from gendeploy.errors import ExportError, UsageError
from gendeploy.export.onnx_graph import export_fp32, sample_inputs
from gendeploy.export.rewrite import (
    batched_conv2d,
    modulated_conv2d,
    modulated_conv_transpose2d,
    rewrite_batch_grouped,
    shared_conv2d,
    verify,
)
from gendeploy.export.signature import parse_forward_kwargs
from gendeploy.export.source import load_eager
from gendeploy.manifest import (
    Artifact,
    ArtifactKind,
    BatchProfile,
    Interface,
    Manifest,
    NoiseInput,
    Precision,
    Source,
    TensorSpec,
    load_manifest,
)
from gendeploy.runtime.onnxrt import OnnxRuntimeRunner
from gendeploy.seeds import draw_latents, draw_noise
from gendeploy.serve.backend_model import RequestError, parse_extras
from gendeploy.serve.repo import RepoOptions, model_config

GEOMETRIES = [  # (kernel, stride, padding, dilation)
    (3, 1, 1, 1),
    (3, 2, 1, 1),
    (3, 1, 2, 2),
    (1, 1, 0, 1),
    (1, 2, 0, 1),
    (5, 2, 0, 1),
]


@pytest.mark.parametrize(("k", "stride", "padding", "dilation"), GEOMETRIES)
@pytest.mark.parametrize("batch", [1, 3])
def test_the_batched_form_equals_the_grouped_convolution(
    k: int, stride: int, padding: int, dilation: int, batch: int
) -> None:
    torch.manual_seed(k + stride + batch)
    x = torch.randn(1, batch * 4, 9, 9)
    w = torch.randn(batch * 5, 4, k, k)
    bias = torch.randn(batch * 5)
    geometry = ([stride] * 2, [padding] * 2, [dilation] * 2)
    grouped = F.conv2d(x, w, bias, *geometry, groups=batch)
    assert torch.allclose(batched_conv2d(x, bias, *geometry, batch, w), grouped, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 4])
def test_modulate_convolve_demodulate_equals_the_fused_modulated_convolution(batch: int) -> None:
    torch.manual_seed(batch)
    x = torch.randn(batch, 6, 7, 7)
    weight, styles = torch.randn(5, 6, 3, 3), torch.randn(batch, 6) + 1
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    fused = F.conv2d(
        x.reshape(1, -1, 7, 7),
        (w * dcoefs.reshape(batch, -1, 1, 1, 1)).reshape(-1, 6, 3, 3),
        padding=1,
        groups=batch,
    )
    factors = ([weight.unsqueeze(0)], [styles.reshape(batch, 1, -1, 1, 1)])
    out_scale = [dcoefs.reshape(batch, -1, 1, 1, 1)]
    split = modulated_conv2d(
        x.reshape(1, -1, 7, 7), None, [1, 1], [1, 1], [1, 1], batch, *factors, out_scale,
        [5, 6, 3, 3],
    )  # fmt: skip
    assert torch.allclose(split, fused, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_the_transposed_and_shared_forms_equal_the_grouped_convolutions(batch: int) -> None:
    """StyleGAN2's upsampling layer: the [N, O, I, k, k] product transposed to [N*I, O, k, k]
    for a transposed convolution with groups = N (read through ``order``), then one low-pass
    filter repeated over the N*O channels of the [1, N*O, H, W] view."""
    torch.manual_seed(batch)
    x = torch.randn(batch, 6, 5, 5, dtype=torch.float64)
    weight = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    styles = torch.randn(batch, 6, dtype=torch.float64) + 1
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)  # [N, O, I, k, k]
    demod = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(batch, -1, 1, 1, 1)
    grouped_weight = (w * demod).transpose(1, 2).reshape(-1, 4, 3, 3)  # [N*I, O, k, k]
    flat = x.reshape(1, -1, 5, 5)
    fused = F.conv_transpose2d(flat, grouped_weight, stride=2, groups=batch)
    split = modulated_conv_transpose2d(
        flat, None, [2, 2], [0, 0], [1, 1], batch, [weight.unsqueeze(0)],
        [styles.reshape(batch, 1, -1, 1, 1)], [demod], [6, 4, 3, 3], [0, 0], [0, 2, 1, 3, 4],
    )  # fmt: skip
    torch.testing.assert_close(split, fused, rtol=0, atol=1e-12)

    fir = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    depthwise = F.conv2d(fused, fir.repeat(batch * 4, 1, 1, 1), groups=batch * 4)
    shared = shared_conv2d(fused, None, [1, 1], [0, 0], [1, 1], batch * 4, fir, [1, 1, 4, 4])
    torch.testing.assert_close(shared, depthwise, rtol=0, atol=1e-12)


def test_the_rewrite_finds_each_batch_grouped_convolution_and_its_form() -> None:
    torch.manual_seed(0)
    cases = [(sm.FusedModulated(), ["modulated"] * 3), (sm.PerSampleToRGB(), ["batched"] * 2)]
    for model, forms in cases:
        model.eval()
        args = sample_inputs(Interface().input_specs(sm.LATENT, 0), 2)
        batch = torch.export.Dim("batch", min=1, max=16)
        graph = torch.export.export(model, args, dynamic_shapes=({0: batch},)).module()
        rewrites = rewrite_batch_grouped(graph)
        assert [r.form for r in rewrites] == forms
        z = torch.randn(5, sm.LATENT)
        with torch.no_grad():
            assert torch.allclose(graph(z), model(z), atol=1e-5)


def test_a_rewrite_is_checked_against_eager_at_1_2_3_and_the_max_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = sm.CountsBatches().eval()
    exported = export_fp32(module, tmp_path / "fp32.onnx", sm.LATENT, 0, max_batch=16)
    assert [r.form for r in exported.rewrites] == ["modulated"] * 3
    assert {1, 2, 3, 16} <= set(module.seen)


def test_a_per_sample_product_whose_axes_are_not_the_convolutions_gets_the_batched_form(
    tmp_path: Path,
) -> None:
    """[N, 2, 8, 3, 3] viewed as [N*4, 4, 3, 3]: the style's axis spans two convolution channels,
    so modulating the input would be wrong; the batched form is exact."""
    torch.manual_seed(0)
    module = sm.MisalignedProduct().eval()
    exported = export_fp32(module, tmp_path / "fp32.onnx", sm.LATENT, 0, max_batch=16)
    assert [(r.form, r.kernel) for r in exported.rewrites] == [("batched", [4, 4, 3, 3])]
    runner = OnnxRuntimeRunner(tmp_path / "fp32.onnx")
    for batch in (1, 3, 16):
        z = draw_latents(list(range(batch)), sm.LATENT)
        with torch.no_grad():
            eager = module(torch.from_numpy(z)).numpy()
        assert np.abs(runner.run({"z": z}) - eager).max() <= 1e-4


def test_a_rewritten_graph_that_fails_to_run_is_a_one_line_export_error() -> None:
    def broken(z: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shape '[2, 4, 3, 3]' is invalid for input of size 144\nTraceback")

    with pytest.raises(ExportError, match=r"^rewriting x does not run at batch 1 \(RuntimeError: "):
        verify(torch.tanh, broken, lambda n: (torch.randn(n, 2),), "rewriting x", [1, 2])
    with pytest.raises(ExportError, match="rewriting x changed the output by 1 at batch 2"):
        verify(torch.tanh, lambda z: torch.tanh(z) + (len(z) > 1), lambda n: (torch.randn(n, 2),),
               "rewriting x", [1, 2])  # fmt: skip


def test_forward_kwargs_parse_to_typed_values_and_bad_ones_are_refused() -> None:
    parsed = parse_forward_kwargs("noise_mode=const, fused_modconv=false,psi=0.7,n=3,x=none")
    assert parsed == {
        "noise_mode": "const",
        "fused_modconv": False,
        "psi": 0.7,
        "n": 3,
        "x": None,
    }
    with pytest.raises(UsageError, match="expected name=value"):
        parse_forward_kwargs("noise_mode")
    with pytest.raises(UsageError, match="'a' given twice"):
        parse_forward_kwargs("a=1,a=2")


def test_noise_is_drawn_per_seed_from_its_own_stream() -> None:
    first, second = draw_noise([3, 4], [[1, 4, 4], [2, 2, 2]])
    assert first.shape == (2, 1, 4, 4) and second.shape == (2, 2, 2, 2)
    again, _ = draw_noise([4], [[1, 4, 4], [2, 2, 2]])
    np.testing.assert_array_equal(again[0], first[1])  # a seed's noise ignores its batch mates
    z = draw_latents([3], 16)
    assert not np.allclose(first[0].reshape(-1), z.reshape(-1))  # not z's stream


def test_requests_get_the_models_truncation_and_noise_or_a_clear_refusal() -> None:
    interface = {
        "truncation_arg": "truncation_psi",
        "truncation_default": 0.7,
        "noise": [{"name": "noise_0", "buffer": "b", "shape": [1, 2, 2]}],
    }
    extras = parse_extras(None, None, np.array([1, 2]), 2, interface)
    np.testing.assert_array_equal(extras["truncation"], np.full((2, 1), 0.7, np.float32))
    np.testing.assert_array_equal(extras["noise_0"], draw_noise([1, 2], [[1, 2, 2]])[0])
    chosen = parse_extras(np.array([[0.5], [1.0]]), np.array([5, 6]), None, 2, interface)
    np.testing.assert_array_equal(chosen["truncation"], np.array([[0.5], [1.0]], np.float32))
    np.testing.assert_array_equal(chosen["noise_0"], draw_noise([5, 6], [[1, 2, 2]])[0])
    for args, message in [
        ((None, None, None, 2, interface), "send 'seed', or 'noise_seed'"),
        ((np.array([[np.nan], [1.0]]), None, np.array([1, 2]), 2, interface), "NaN or Inf"),
        ((np.array([[0.5]]), None, np.array([1, 2]), 2, interface), "truncation has batch 1"),
        ((None, np.array([-1, 2]), None, 2, interface), "noise_seed must be in"),
    ]:
        with pytest.raises(RequestError, match=message):
            parse_extras(*args)
    # psi: within the manifest's truncation_range, both ends included; unchecked without one
    psi = np.array([[-1.0], [2.0]], np.float32)
    ranged = {**interface, "truncation_range": [-1.0, 2.0]}
    np.testing.assert_array_equal(
        parse_extras(psi, None, np.array([1, 2]), 2, ranged)["truncation"], psi
    )
    with pytest.raises(RequestError, match=r"truncation 2.5 is out of range \[-1, 2\]"):
        parse_extras(psi + 0.5, None, np.array([1, 2]), 2, ranged)
    assert parse_extras(psi * 3, None, np.array([1, 2]), 2, interface)["truncation"].max() == 6.0


def test_triton_configs_of_an_export_with_truncation_and_seeded_noise() -> None:
    interface = Interface(
        truncation_arg="truncation_psi",
        truncation_default=0.7,
        noise=[NoiseInput("noise_0", "synthesis.noise_const", [1, 8, 8])],
    )
    fp32 = Artifact(
        "fp32", ArtifactKind.onnx, "fp32.onnx", Precision.fp32, interface.input_specs(8, 0),
        TensorSpec("images", "float32", [-1, 3, 8, 8], "NCHW"),
    )  # fmt: skip
    manifest = Manifest(
        "sg", Source("in_memory", "m:G", "0" * 64), 8, 0, [3, 8, 8], BatchProfile(1, 4, 4), 20,
        [fp32], interface=interface,
    )  # fmt: skip
    python = json_format.MessageToDict(
        model_config(manifest, fp32, "sg", "python", RepoOptions(), gpu=False)
    )
    inputs = {i["name"]: i for i in python["input"]}
    assert list(inputs) == ["z", "seed", "truncation", "noise_seed"]  # noise_0 drawn inside
    assert inputs["truncation"].get("optional") and inputs["noise_seed"].get("optional")
    assert set(python["modelWarmup"][0]["inputs"]) == {"z", "noise_seed"}
    onnx_config = json_format.MessageToDict(
        model_config(manifest, fp32, "sg_onnx", "onnx", RepoOptions(), gpu=False)
    )
    dims = {i["name"]: i["dims"] for i in onnx_config["input"]}
    assert dims == {"z": ["8"], "truncation": ["1"], "noise_0": ["1", "8", "8"]}


def test_export_generator_on_a_module_in_memory(tmp_path: Path) -> None:
    torch.manual_seed(1)
    module = sm.Truncated()
    out = tmp_path / "mem"
    manifest = gendeploy.export_generator(
        module, latent_dim=8, image_shape=(3, 8, 8), out=out, max_batch=4
    )
    assert manifest.source.kind == "in_memory"
    assert manifest.source.path == "stylegan_models:Truncated"
    assert load_manifest(out).interface.truncation_arg == "truncation_psi"
    messages: list[str] = []
    again = gendeploy.export_generator(
        module, latent_dim=8, image_shape=(3, 8, 8), out=out, max_batch=4, log=messages.append
    )
    assert again.fingerprint == manifest.fingerprint and messages[-1].startswith("up to date")
    with torch.no_grad():
        module.w_avg.add_(1.0)  # other weights: another export
    with pytest.raises(UsageError, match="holds another export"):
        gendeploy.export_generator(module, latent_dim=8, image_shape=(3, 8, 8), out=out)
    with pytest.raises(ExportError, match="was made from a module in memory"):
        load_eager(manifest)
    with pytest.raises(UsageError, match="forward_kwargs\\['mode'\\] is a list"):
        gendeploy.export_generator(
            module, latent_dim=8, image_shape=(3, 8, 8), forward_kwargs={"mode": [1]}
        )


GENERATOR_SOURCE = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3 * 4 * 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(z)).reshape(-1, 3, 4, 4){edit}
"""


def _import_tiny(path: Path, edit: str) -> torch.nn.Module:
    path.write_text(GENERATOR_SOURCE.format(edit=edit))
    spec = importlib.util.spec_from_file_location("notebook_tiny", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Tiny()


def test_an_in_memory_export_is_not_up_to_date_once_the_models_code_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    first = _import_tiny(tmp_path / "tiny.py", "")
    out = tmp_path / "tiny"
    gendeploy.export_generator(first, latent_dim=4, image_shape=(3, 4, 4), out=out, max_batch=2)
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"published {out}")  # default log
    same = _import_tiny(tmp_path / "tiny.py", "")
    same.load_state_dict(first.state_dict())
    gendeploy.export_generator(same, latent_dim=4, image_shape=(3, 4, 4), out=out, max_batch=2)
    assert capsys.readouterr().out.startswith(f"up to date: {out}")
    edited = _import_tiny(tmp_path / "tiny.py", " * 0.5")  # the same weights, another forward
    edited.load_state_dict(first.state_dict())
    with pytest.raises(UsageError, match="holds another export"):
        gendeploy.export_generator(
            edited, latent_dim=4, image_shape=(3, 4, 4), out=out, max_batch=2, log=None
        )
    assert capsys.readouterr().out == ""  # log=None is silent


def test_import_gendeploy_does_not_import_torch() -> None:
    code = (
        "import sys, gendeploy; print('torch' in sys.modules, callable(gendeploy.export_generator))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "True"], result.stderr
