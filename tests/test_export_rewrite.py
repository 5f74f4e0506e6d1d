"""The pieces under the StyleGAN tests, each on its own: the rewritten convolution forms, the
served signature's parsing, the seeded noise RNG and request checks, the Triton configs of an
export with truncation and noise, and ``gendeploy.export_generator`` on a module in memory."""

from __future__ import annotations

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
from gendeploy.export.manifest import (
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
from gendeploy.export.onnx_graph import sample_inputs
from gendeploy.export.rewrite import batched_conv2d, modulated_conv2d, rewrite_batch_grouped
from gendeploy.export.signature import parse_forward_kwargs
from gendeploy.export.source import load_eager
from gendeploy.serve.backend_model import RequestError, draw_latents, draw_noise, parse_extras
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


def test_import_gendeploy_does_not_import_torch() -> None:
    code = (
        "import sys, gendeploy; print('torch' in sys.modules, callable(gendeploy.export_generator))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "True"], result.stderr
