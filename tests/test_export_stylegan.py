"""StyleGAN-shaped generators (tests/stylegan_models.py) through export and a real tritonserver.

Each exports with a dynamic batch, matches eager at batch sizes 1, 3 and 16 (FP32 within 1e-4),
passes the gate, and is served (one tritonserver for the module) with images equal to ONNX Runtime
in-process on the same inputs. Generators that cannot be exported as given are refused with one
line.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import stylegan_models as sm
import torch
from cli_support import cli
from safetensors.torch import save_file
from serve_support import require_tritonserver
from typer.testing import CliRunner

from gendeploy.bench.flops import flops_per_image
from gendeploy.cli import app
from gendeploy.errors import ValidationError
from gendeploy.export import fp16_islands, gate
from gendeploy.export.inmemory import export_generator
from gendeploy.export.onnx_graph import export_fp32
from gendeploy.export.signature import TRUNCATION_RANGE, serving_module
from gendeploy.export.source import load_eager, load_module, make_artifact
from gendeploy.manifest import PLAN, Manifest, Precision, load_manifest
from gendeploy.runtime.eager import EagerRunner
from gendeploy.runtime.onnxrt import OnnxRuntimeRunner
from gendeploy.runtime.triton import InferenceError, TritonRunner
from gendeploy.seeds import draw_latents, draw_noise
from gendeploy.serve.client import generate
from gendeploy.serve.repo import write_repo
from gendeploy.serve.server import TritonServer

MODELS_FILE = Path(sm.__file__)
EXAMPLE = Path(__file__).parents[1] / "examples" / "stylegan"
FP32_ATOL = 1e-4
MAX_BATCH = 16
BATCHES = (1, 3, 16)


@dataclass(frozen=True)
class Case:
    model: type[torch.nn.Module]
    form: str  # the rewrite every batch-grouped convolution gets
    classes: int = 0
    noise: str = "const"
    fp16: bool = False


CASES = {
    "modulated": Case(sm.FusedModulated, "modulated"),
    "nodemod": Case(sm.FusedModulatedNoDemod, "modulated"),
    "constnoise": Case(sm.ConstantNoise, "modulated"),
    "seedednoise": Case(sm.ConstantNoise, "modulated", noise="seeded"),
    "truncation": Case(sm.Truncated, "modulated", fp16=True),
    "onehot": Case(sm.OneHotConditional, "modulated", classes=sm.CLASSES, fp16=True),
    "persample": Case(sm.PerSampleToRGB, "batched"),
    # NVlabs' int(batch_size) before the grouped convolution: made symbolic again, then rewritten
    "nvlabs": Case(sm.NVLabsStyle, "modulated"),
}


@dataclass
class Exported:
    module: torch.nn.Module  # the generator as given
    manifest: Manifest
    export_dir: Path

    @property
    def eager(self) -> torch.nn.Module:
        return serving_module(self.module, self.manifest.interface, self.manifest.num_classes)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    root = tmp_path_factory.mktemp("stylegan")
    found = {}
    for i, (name, case) in enumerate(CASES.items()):
        torch.manual_seed(i)
        module = case.model()
        manifest = export_generator(
            module,
            latent_dim=sm.LATENT,
            num_classes=case.classes,
            image_shape=(3, 8, 8),
            out=root / name,
            name=name,
            max_batch=MAX_BATCH,
            noise=case.noise,
            fp16=case.fp16,
        )
        found[name] = Exported(module, manifest, root / name)
    return found


@pytest.fixture(scope="module")
def server(
    exported: dict[str, Exported], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    require_tritonserver()
    repo = tmp_path_factory.mktemp("stylegan_repo")
    for item in exported.values():
        write_repo(item.export_dir, repo)
    server = TritonServer(repo, log_path=repo.parent / "stylegan_tritonserver.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def full_feeds(item: Exported, seeds: list[int], psi: list[float] | None = None) -> dict:
    """Every input of the export for ``seeds``, as the served model derives them from a request."""
    interface = item.manifest.interface
    feeds = {"z": draw_latents(seeds, sm.LATENT)}
    if item.manifest.num_classes:
        feeds["labels"] = np.array(seeds, np.int64) % item.manifest.num_classes
    if interface.truncation_arg:
        default = [interface.truncation_default] * len(seeds)
        feeds["truncation"] = np.array(psi or default, np.float32).reshape(-1, 1)
    if interface.noise:
        drawn = draw_noise(seeds, [n.shape for n in interface.noise])
        feeds.update({n.name: a for n, a in zip(interface.noise, drawn, strict=True)})
    return feeds


@pytest.mark.parametrize("name", list(CASES))
def test_exports_with_a_dynamic_batch_and_matches_eager_at_1_3_16(
    exported: dict[str, Exported], name: str
) -> None:
    item = exported[name]
    fp32 = item.manifest.artifact("fp32")
    assert fp32.validation["passed"] is True
    rewrites = fp32.extra["rewrites"]
    assert rewrites and {r["form"] for r in rewrites} == {CASES[name].form}
    runner = OnnxRuntimeRunner(item.export_dir / fp32.path)
    assert all(isinstance(i.shape[0], str) for i in runner.session.get_inputs())  # dynamic
    eager = EagerRunner(item.eager)
    for batch in BATCHES:
        feeds = full_feeds(item, list(range(100, 100 + batch)))
        assert np.abs(runner.run(feeds) - eager.run(feeds)).max() <= FP32_ATOL, batch


def test_modulated_convolutions_become_ordinary_convolutions_and_the_rest_matmuls(
    exported: dict[str, Exported],
) -> None:
    ops = {
        name: {n.op_type for n in onnx.load(str(item.export_dir / "fp32.onnx")).graph.node}
        for name, item in exported.items()
    }
    assert "Conv" in ops["modulated"]
    assert "Conv" not in ops["persample"] and "MatMul" in ops["persample"]
    layers = [r["layer"] for r in exported["modulated"].manifest.artifact("fp32").extra["rewrites"]]
    assert layers == ["synthesis.conv0", "synthesis.conv1", "synthesis.torgb"]


def test_the_served_interface_is_recorded_in_the_manifest(exported: dict[str, Exported]) -> None:
    assert exported["truncation"].manifest.interface.truncation_arg == "truncation_psi"
    assert exported["truncation"].manifest.interface.truncation_default == 0.8
    assert exported["onehot"].manifest.interface.class_input == "onehot"
    names = [t.name for t in exported["onehot"].manifest.artifact("fp32").inputs]
    assert names == ["z", "labels"]  # clients send integer labels; the graph builds c
    noise = exported["seedednoise"].manifest.interface.noise
    assert [(n.name, n.buffer, n.shape) for n in noise] == [("noise_0", "noise_const", [1, 8, 8])]
    assert exported["constnoise"].manifest.interface.noise == []


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", list(CASES))
def test_served_images_equal_in_process(
    exported: dict[str, Exported], server: TritonServer, name: str, protocol: str
) -> None:
    item = exported[name]
    seeds = [5, 6, 7]
    request: dict[str, np.ndarray] = {"seed": np.array(seeds, np.int64)}
    psi = None
    if item.manifest.interface.truncation_arg:
        psi = [0.3, 0.8, 1.2]
        request["truncation"] = np.array(psi, np.float32).reshape(-1, 1)
    feeds = full_feeds(item, seeds, psi)
    if "labels" in feeds:
        request["labels"] = feeds["labels"]
    url = server.http_url if protocol == "http" else server.grpc_url
    with TritonRunner(url, name, protocol) as runner:
        served = runner.run(request)
    in_process = OnnxRuntimeRunner(item.export_dir / "fp32.onnx").run(feeds)
    np.testing.assert_allclose(served, in_process, atol=1e-6)
    assert np.abs(served - EagerRunner(item.eager).run(feeds)).max() <= FP32_ATOL


@pytest.mark.triton
def test_seeded_noise_is_drawn_from_the_request_seed(
    exported: dict[str, Exported], server: TritonServer
) -> None:
    z = draw_latents([3, 3], sm.LATENT)
    with TritonRunner(server.http_url, "seedednoise") as runner:
        twice = runner.run({"seed": np.array([9, 9])})
        other_noise = runner.run({"z": z, "noise_seed": np.array([1, 2])})
        with pytest.raises(InferenceError, match="draws each image's noise from a seed"):
            runner.run({"z": z})
    np.testing.assert_array_equal(twice[0], twice[1])  # reproducible
    assert np.abs(other_noise[0] - other_noise[1]).max() > 1e-3  # same z, other noise
    item = exported["seedednoise"]
    feeds = {"z": z, **dict(zip(["noise_0"], draw_noise([1, 2], [[1, 8, 8]]), strict=True))}
    in_process = OnnxRuntimeRunner(item.export_dir / "fp32.onnx").run(feeds)
    np.testing.assert_allclose(other_noise, in_process, atol=1e-6)


@pytest.mark.triton
def test_truncation_is_optional_per_request_and_generate_takes_it(
    exported: dict[str, Exported], server: TritonServer, tmp_path: Path
) -> None:
    item = exported["truncation"]
    seeds = [40, 41, 42, 43]
    ort = OnnxRuntimeRunner(item.export_dir / "fp32.onnx")
    default, _ = generate(server.http_url, "truncation", 4, seed=40)
    np.testing.assert_allclose(default, ort.run(full_feeds(item, seeds)), atol=1e-6)  # psi 0.8
    psi07, info = generate(
        server.grpc_url, "truncation", 4, protocol="grpc", seed=40, truncation=0.7
    )
    assert info.accepts_truncation
    np.testing.assert_allclose(psi07, ort.run(full_feeds(item, seeds, [0.7] * 4)), atol=1e-6)
    assert np.abs(psi07 - default).max() > 1e-3
    out = tmp_path / "psi.png"
    args = ["generate", "--url", server.http_url, "--model", "truncation", "-n", "4"]
    result = CliRunner().invoke(app, [*args, "--truncation", "0.7", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    args = ["generate", "--url", server.http_url, "--model", "modulated", "--truncation", "0.7"]
    refused = CliRunner().invoke(app, [*args, "-o", str(out)])
    assert refused.exit_code != 0
    assert "takes no truncation: drop --truncation" in str(refused.exception)


def test_psi_range_is_recorded_and_the_gate_runs_its_ends(exported: dict[str, Exported]) -> None:
    interface = exported["truncation"].manifest.interface
    assert interface.truncation_range == list(TRUNCATION_RANGE)
    assert exported["modulated"].manifest.interface.truncation_range == []  # takes no psi
    feeds = gate.gate_inputs(sm.LATENT, 0, interface=interface)
    psi = set(np.concatenate([f["truncation"].ravel() for f in feeds]).tolist())
    expected = [interface.truncation_default, 1.0, *TRUNCATION_RANGE]
    assert psi >= set(np.array(expected, np.float32).tolist())
    # the FP16 range probe runs on the same inputs, plus z from the tails
    probe = fp16_islands.range_feeds(gate.gate_inputs(sm.LATENT, 0, interface=interface))
    assert np.abs(probe[-1]["z"]).max() > np.abs(probe[0]["z"]).max()


def test_fp16_keeps_the_demodulation_chain_fp32_by_pattern(exported: dict[str, Exported]) -> None:
    """rsqrt(sum(w^2) + eps) and where it is applied stay FP32 in the FP16 ONNX although their
    values on the gate's inputs are far below the limits the range probe keeps FP32 for."""
    item = exported["truncation"]
    fp16 = item.manifest.artifact("fp16")
    assert fp16.validation["passed"] is True
    kept = {i["node"]: i for i in fp16.extra["fp32_layers"] if i["reason"] == "normalization"}
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(item.export_dir / fp16.path))).graph
    dtype = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    demod = [n for n in graph.node if n.op_type in ("Pow", "ReduceSum", "Sqrt", "Reciprocal")]
    # conv0 and conv1 demodulate (the toRGB does not): square, sum, sqrt, reciprocal each
    assert sorted(n.op_type for n in demod) == sorted(
        ["Pow", "ReduceSum", "Sqrt", "Reciprocal"] * 2
    )
    for node in demod:
        assert node.name in kept, node.name
        assert dtype[node.output[0]] == onnx.TensorProto.FLOAT, node.name
        assert kept[node.name]["max_abs"] < fp16_islands.LIMITS[-1]  # not chosen by the probe
    applied = [kept[n] for n in kept if kept[n]["op"] == "Mul"]
    assert len(applied) >= 2  # the demodulation applied to each conv's output, in FP32
    fp32 = {n.name for n in graph.node if n.op_type == "Conv"}
    assert fp32 and not fp32 & set(kept)  # the convolutions themselves run in FP16


def test_fp16_normalization_chains_are_found_by_pattern_not_every_reduction() -> None:
    """x * rsqrt(sum(x^2) + eps) is a chain; x - mean(x) and a plain sum are not."""
    h = onnx.helper
    nodes = [
        h.make_node("Mul", ["x", "x"], ["sq"], name="square"),
        h.make_node("ReduceSum", ["sq", "axes"], ["ss"], name="sum_sq"),
        h.make_node("Add", ["ss", "eps"], ["sse"], name="add_eps"),
        h.make_node("Sqrt", ["sse"], ["norm"], name="sqrt"),
        h.make_node("Reciprocal", ["norm"], ["inv"], name="rsqrt"),
        h.make_node("Mul", ["x", "inv"], ["demod"], name="apply"),
        h.make_node("ReduceMean", ["x", "axes"], ["mean"], name="mean"),
        h.make_node("Sub", ["demod", "mean"], ["centred"], name="centre"),
        h.make_node("ReduceSum", ["centred", "axes"], ["total"], name="plain_sum"),
        h.make_node("Mul", ["total", "eps"], ["y"], name="scale"),
    ]
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 1])
    inits = [
        onnx.numpy_helper.from_array(np.array([1], np.int64), "axes"),
        onnx.numpy_helper.from_array(np.array(1e-8, np.float32), "eps"),
    ]
    model = h.make_model(h.make_graph(nodes, "g", [x], [y], inits))
    found = {n.name for n in fp16_islands.normalization_chains(model)}
    assert found == {"square", "sum_sq", "add_eps", "sqrt", "rsqrt", "apply"}


def test_fp16_at_the_ends_of_the_psi_range_stays_finite(exported: dict[str, Exported]) -> None:
    """With FP16 storage emulated (ONNX Runtime CPU computes FP16 nodes in FP32 otherwise)."""
    item = exported["truncation"]
    emulated = item.export_dir.parent / "truncation_fp16_storage.onnx"
    fp16 = onnx.load(str(item.export_dir / item.manifest.artifact("fp16").path))
    onnx.save(fp16_islands.emulate_fp16_storage(fp16), str(emulated))
    fp32 = OnnxRuntimeRunner(item.export_dir / "fp32.onnx")
    tolerance = gate.TOLERANCES[Precision.fp16].max_levels  # FP16 is judged by its pictures
    with OnnxRuntimeRunner(emulated) as runner:
        for psi in (*item.manifest.interface.truncation_range, 1.0):
            feeds = full_feeds(item, list(range(16)), [psi] * 16)
            out = runner.run(feeds)
            assert np.isfinite(out).all(), psi
            moved = gate.render(out).astype(np.int16) - gate.render(fp32.run(feeds))
            assert np.abs(moved).max() <= tolerance, psi


@pytest.mark.triton
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_psi_outside_the_checked_range_is_refused(
    exported: dict[str, Exported], server: TritonServer, protocol: str
) -> None:
    item = exported["truncation"]
    lo, hi = item.manifest.interface.truncation_range
    url = server.http_url if protocol == "http" else server.grpc_url
    seeds = [1, 2, 3]
    with TritonRunner(url, "truncation", protocol) as runner:
        for bad in (hi + 0.5, lo - 0.5):
            request = {
                "seed": np.array(seeds),
                "truncation": np.array([[0.5], [bad], [1.0]], np.float32),
            }
            with pytest.raises(InferenceError, match=rf"truncation {bad:g} is out of range") as e:
                runner.run(request)
            assert e.value.status == (
                "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
            )
        at_max = runner.run(
            {"seed": np.array(seeds), "truncation": np.full((3, 1), hi, np.float32)}
        )
    assert np.isfinite(at_max).all()
    in_process = OnnxRuntimeRunner(item.export_dir / "fp32.onnx").run(
        full_feeds(item, seeds, [hi] * 3)
    )
    np.testing.assert_allclose(at_max, in_process, atol=1e-6)
    args = ["generate", "--url", server.http_url, "--model", "truncation", "--truncation"]
    refused = CliRunner().invoke(
        app, [*args, str(hi + 1), "-o", str(item.export_dir.parent / "x.png")]
    )
    assert refused.exit_code != 0
    assert f"out of range [{lo:g}, {hi:g}]" in str(refused.exception)


@pytest.mark.triton
def test_a_one_hot_model_serves_integer_labels(
    exported: dict[str, Exported], server: TritonServer
) -> None:
    with TritonRunner(server.http_url, "onehot") as runner:
        images = runner.run({"seed": np.array([1, 1, 1]), "labels": np.array([0, 1, 2])})
        with pytest.raises(InferenceError, match="label 3 is out of range"):
            runner.run({"seed": np.array([1]), "labels": np.array([3])})
    assert np.abs(images[0] - images[1]).max() > 1e-3  # the class changes the image


def test_forward_kwargs_from_the_cli_are_applied_and_recorded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = sm.Truncated()
    weights = tmp_path / "truncated.safetensors"
    save_file(module.state_dict(), str(weights))
    out = tmp_path / "psi05"
    code, stdout, stderr = cli(
        "export", "--model", f"{MODELS_FILE}:Truncated", "--weights", str(weights),
        "--latent-dim", "8", "--image-shape", "3,8,8", "--forward-kwargs", "truncation_psi=0.5",
        "--max-batch", "4", "--out", str(out),
    )  # fmt: skip
    assert code == 0, stderr
    assert "rewrote the batch-grouped convolution synthesis.conv0 (modulated form)" in stdout
    manifest = load_manifest(out)
    assert manifest.interface.forward_kwargs == {"truncation_psi": 0.5}
    assert manifest.interface.truncation_arg == ""  # fixed by the flag: not a served input
    assert "--forward-kwargs truncation_psi=0.5" in manifest.command
    feeds = {"z": draw_latents([1, 2, 3], sm.LATENT)}
    onnx_out = OnnxRuntimeRunner(out / "fp32.onnx").run(feeds)
    rebuilt = load_eager(manifest)  # from the file and weights, with the recorded kwargs
    assert np.abs(onnx_out - EagerRunner(rebuilt).run(feeds)).max() <= FP32_ATOL
    with torch.no_grad():
        by_hand = module.eval()(torch.from_numpy(feeds["z"]), truncation_psi=0.5).numpy()
    assert np.abs(onnx_out - by_hand).max() <= FP32_ATOL


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("RandomInForward", "error: the generator draws random numbers in forward: the same input "
         "twice gives images"),
        ("IgnoresLatent", "error: the generator's output does not depend on z: 8 samples"),
        ("HyperTransposed", "error: layer '<top level>': a transposed convolution whose weight "
         "is not a modulated product with groups = batch (per-sample weights over a [1, N*C, H, "
         "W] view) cannot be exported with a dynamic batch, and gendeploy rewrites only 2-d "
         "convolutions and modulated transposed ones; options: the model's own non-fused path "
         "(--forward-kwargs, e.g. fused_modconv=false), or a static batch (--max-batch 1)"),
        ("BatchBranch", "error: the model turns the batch size into a constant while it is traced "
         "(int(x.shape[0]), a Python branch or assert on it), and gendeploy cannot make it "
         "symbolic again: its graph differs between batch 2 and 3 (a Python branch on the batch "
         "size); its batch-grouped convolutions ('conv0', 'torgb': groups = batch over a [1, N*C, "
         "H, W] view) cannot be exported with a dynamic batch as written; options: the model's "
         "own non-fused path (NVlabs: --forward-kwargs fused_modconv=false), keep the batch "
         "symbolic (x.shape[0], no int()), or a static batch (--max-batch 1)"),
        ("FusedModulated --forward-kwargs fused=true", "error: --forward-kwargs fused: "),
        # randomness is what is wrong, not how the noise buffers broadcast
        ("RandomWithNoiseBuffer --noise seeded", "error: the generator draws random numbers in "
         "forward: the same input twice gives images"),
    ],
)  # fmt: skip
def test_generators_export_cannot_take_are_refused_with_one_line(
    model: str, message: str, tmp_path: Path
) -> None:
    cls, *extra = model.split()
    out = tmp_path / "refused"
    code, _, stderr = cli(
        "export", "--model", f"{MODELS_FILE}:{cls}", "--latent-dim", "8", "--image-shape",
        "3,8,8", "--max-batch", "4", "--out", str(out), "--random-weights", *extra,
    )  # fmt: skip
    assert code != 0
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith(message), stderr
    assert not out.exists()


def test_a_model_that_makes_the_batch_an_int_gets_it_made_symbolic_again(tmp_path: Path) -> None:
    """NVlabs' modulated_conv2d does int(batch_size): the export says so, records it, and the
    ONNX takes any batch (the "nvlabs" case above serves it); the recorded layers are the
    model's."""
    torch.manual_seed(0)
    weights = tmp_path / "int.safetensors"
    save_file(sm.BatchAsInt().state_dict(), str(weights))
    code, stdout, stderr = cli(
        "export", "--model", f"{MODELS_FILE}:BatchAsInt", "--weights", str(weights),
        "--latent-dim", "8", "--image-shape", "3,8,8", "--max-batch", "8",
        "--out", str(tmp_path / "int"),
    )  # fmt: skip
    assert code == 0, stderr
    assert "turns the batch size into a constant (int(x.shape[0])): captured at batch 2" in stdout
    fp32 = load_manifest(tmp_path / "int").artifact("fp32")
    assert "symbolic_batch" in fp32.extra
    layers = [r["layer"] for r in fp32.extra["rewrites"]]
    assert layers == ["synthesis.conv0", "synthesis.conv1", "synthesis.torgb"]
    module = load_eager(load_manifest(tmp_path / "int"))
    runner = OnnxRuntimeRunner(tmp_path / "int" / fp32.path)
    for batch in (1, 5, 8):
        feeds = {"z": draw_latents(list(range(batch)), sm.LATENT)}
        assert np.abs(runner.run(feeds) - EagerRunner(module).run(feeds)).max() <= FP32_ATOL


def test_a_graph_made_symbolic_that_holds_only_up_to_batch_4_is_refused(tmp_path: Path) -> None:
    """Chunks of 4: at batch 2 and 3 the one chunk is the whole batch, so the graph made
    symbolic from those captures holds up to batch 4 only; --max-batch 8 is refused."""
    out = tmp_path / "chunked"
    code, _, stderr = cli(
        "export", "--model", f"{MODELS_FILE}:ChunkedByFour", "--latent-dim", "8",
        "--image-shape", "3,8,8", "--max-batch", "8", "--out", str(out), "--random-weights",
    )  # fmt: skip
    assert code != 0
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("error: the model turns the batch size into a constant"), stderr
    assert "<= 4" in stderr and "('conv0', 'torgb'" in stderr
    assert not out.exists()


def test_a_data_dependent_branch_before_a_grouped_convolution_is_one_line(tmp_path: Path) -> None:
    """torch.export fails (a Python branch on a value), TorchScript then fails on the grouped
    convolution and prints its IR from C++: the user sees one line naming the layers, nothing
    else (a real process, so output written to the file descriptors counts too)."""
    out = tmp_path / "branch"
    result = subprocess.run(
        [
            sys.executable, "-c", "from gendeploy.cli import main; main()", "export", "--model",
            f"{MODELS_FILE}:DataDependentBranch", "--latent-dim", "8", "--image-shape", "3,8,8",
            "--max-batch", "4", "--out", str(out), "--random-weights",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: layers "), (
        result.stderr[-2000:]
    )
    named = "'synthesis.conv0', 'synthesis.conv1', 'synthesis.torgb': a convolution with groups"
    assert named in result.stderr and "GuardOnDataDependentSymNode" in result.stderr
    assert "fused_modconv=false" in result.stderr and "--max-batch 1" in result.stderr
    assert result.stdout == ""
    assert not out.exists()


def test_a_truncation_argument_the_model_ignores_is_not_served(tmp_path: Path) -> None:
    messages: list[str] = []
    manifest = export_generator(
        sm.IgnoresTruncation(), latent_dim=8, image_shape=(3, 8, 8), out=tmp_path / "ignores",
        max_batch=4, log=messages.append,
    )  # fmt: skip
    assert manifest.interface.truncation_arg == ""
    assert [t.name for t in manifest.artifact("fp32").inputs] == ["z"]
    assert any("truncation_psi does not change the output" in m for m in messages), messages


def test_the_static_batch_option_exports_a_transposed_grouped_convolution(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = sm.HyperTransposed()
    manifest = export_generator(
        module, latent_dim=8, image_shape=(3, 8, 8), out=tmp_path / "static", max_batch=1
    )
    assert manifest.artifact("fp32").extra["static_batch"] == 1
    feeds = {"z": draw_latents([4], sm.LATENT)}
    onnx_out = OnnxRuntimeRunner(tmp_path / "static" / "fp32.onnx").run(feeds)
    assert np.abs(onnx_out - EagerRunner(module).run(feeds)).max() <= FP32_ATOL


def test_a_modulated_transposed_convolution_is_rewritten_and_matches_eager(tmp_path: Path) -> None:
    """The per-sample product laid out [N, I, O, k, k] (no transpose on the way): modulate the
    input, one transposed convolution with the shared weight; checked at batch 1, 3 and 16."""
    torch.manual_seed(0)
    module = sm.TransposedGrouped().eval()
    exported = export_fp32(module, tmp_path / "fp32.onnx", sm.LATENT, 0, max_batch=16)
    assert [(r.layer, r.form, r.transposed) for r in exported.rewrites] == [
        ("up", "modulated", True)
    ]
    runner = OnnxRuntimeRunner(tmp_path / "fp32.onnx")
    for batch in (1, 3, 16):
        feeds = {"z": draw_latents(list(range(batch)), sm.LATENT)}
        assert np.abs(runner.run(feeds) - EagerRunner(module).run(feeds)).max() <= FP32_ATOL


def test_fp16_keeps_overflowing_layers_in_fp32_islands_listed_in_the_manifest(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    module = sm.Overflowing()
    manifest = export_generator(
        module, latent_dim=8, image_shape=(3, 8, 8), out=tmp_path / "fp16", fp16=True, max_batch=8
    )
    fp16 = manifest.artifact("fp16")
    assert fp16.validation["passed"] is True
    islands = fp16.extra["fp32_layers"]
    assert {i["op"] for i in islands} >= {"Mul", "ReduceSum", "Div"}
    assert all(i["max_abs"] > fp16_islands.LIMITS[0] for i in islands if i["reason"] == "range")
    # without the islands, FP16 storage overflows: the same gate refuses the plain conversion
    loaded = load_module(module, 8, 0, (3, 8, 8))
    reference = gate.eager_reference(loaded.module, 8, 0, max_batch=8)
    plain = fp16_islands.emulate_fp16_storage(
        fp16_islands.onnx_graph.convert_fp16(onnx.load(str(tmp_path / "fp16" / "fp32.onnx")))
    )
    path = tmp_path / "plain.onnx"
    onnx.save(plain, str(path))
    artifact = make_artifact(loaded, PLAN["fp16"], path.name)
    with (
        OnnxRuntimeRunner(path) as runner,
        pytest.raises(ValidationError, match="gate failed for 'fp16'"),
    ):
        gate.validate(runner, artifact, reference, max_batch=8)


def test_the_stylegan_example_counts_its_own_flops() -> None:
    """The bench's FLOP count of the example equals the sum over its layers (2 per MAC)."""
    spec = importlib.util.spec_from_file_location("stylegan_example", EXAMPLE / "model.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    g = example.StyleGAN(16, 16, resolution=8, channels={4: 8, 8: 4}, mapping_layers=2)
    mapping = 2 * (16 * 16 + 16 * 16)
    styles = 2 * 16 * (8 + 8 + 8 + 8 + 4 + 4)  # one affine per modulated layer
    convs = 2 * (4 * 4 * (8 * 8 * 9 * 2 + 3 * 8) + 8 * 8 * (4 * 8 * 9 + 4 * 4 * 9 + 3 * 4))
    assert flops_per_image(g, 16, 0) == mapping + styles + convs
