"""The Triton model repository writer, the seed RNG and request validation (no server needed).

Golden files: ``GENDEPLOY_UPDATE_GOLDEN=1 pytest tests/test_serve_repo.py`` rewrites them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from serve_support import TINY_CONDITIONAL, TINY_UNCONDITIONAL, build_export, make_checkpoint
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from gendeploy.cli import app
from gendeploy.errors import ExportError, ServeError
from gendeploy.manifest import (
    Artifact,
    ArtifactKind,
    BatchProfile,
    Manifest,
    Precision,
    Source,
    TensorSpec,
    load_manifest,
)
from gendeploy.seeds import draw_latents, draw_noise
from gendeploy.serve.backend_model import RequestError, choose_backend, parse_request
from gendeploy.serve.docker import container_tag, docker_command
from gendeploy.serve.repo import (
    RepoOptions,
    config_text,
    model_config,
    parse_config,
    served_model_source,
    write_repo,
)

GOLDEN = Path(__file__).parent / "golden"


def dcgan64_manifest() -> Manifest:
    """A fixed conditional DCGAN-64 export with an FP16 engine, as export would describe it."""
    inputs = [
        TensorSpec("z", "float32", [-1, 100]),
        TensorSpec("labels", "int64", [-1], value_range=[0, 9]),
    ]
    images = TensorSpec("images", "float32", [-1, 3, 64, 64], "NCHW")
    engine_extra = {"tensorrt": "10.3.0", "profile": {"min": 1, "opt": 8, "max": 32}}
    int8_extra = {"float_layers": [], "calibration": {"samples": 256}}
    return Manifest(
        name="dcgan64",
        source=Source("checkpoint", "runs/dcgan64/checkpoint.pt", "0" * 64),
        latent_dim=100,
        num_classes=10,
        image_shape=[3, 64, 64],
        batch=BatchProfile(1, 8, 32),
        opset=20,
        artifacts=[
            Artifact("fp32", ArtifactKind.onnx, "fp32.onnx", Precision.fp32, inputs, images),
            Artifact(
                "trt_fp16",
                ArtifactKind.tensorrt,
                "trt_fp16.plan",
                Precision.fp16,
                inputs,
                images,
                extra=engine_extra,
            ),
            Artifact(
                "int8",
                ArtifactKind.onnx,
                "int8.onnx",
                Precision.int8,
                inputs,
                images,
                extra=int8_extra,
            ),
        ],
    )


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("GENDEPLOY_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path}; run with GENDEPLOY_UPDATE_GOLDEN=1"
    assert text == path.read_text()


@pytest.mark.parametrize(
    ("kind", "gpu", "artifact", "golden"),
    [
        ("onnx", False, "fp32", "dcgan64_onnx_cpu.pbtxt"),
        ("onnx", True, "fp32", "dcgan64_onnx_gpu.pbtxt"),
        ("trt", True, "trt_fp16", "dcgan64_trt.pbtxt"),
        ("python", False, "fp32", "dcgan64_python.pbtxt"),
        ("python", False, "int8", "dcgan64_python_int8.pbtxt"),
        ("openvino", False, "int8", "dcgan64_openvino.pbtxt"),
    ],
)
def test_configs_round_trip_through_triton_protobuf_and_match_golden_files(
    kind: str, gpu: bool, artifact: str, golden: str
) -> None:
    manifest = dcgan64_manifest()
    config = model_config(
        manifest, manifest.artifact(artifact), "dcgan64", kind, RepoOptions(), gpu
    )
    text = config_text(config)
    assert parse_config(text) == config
    check_golden(golden, text)


def test_an_int8_model_runs_only_on_a_runtime_its_export_gated() -> None:
    """OpenVINO where it imports; where it does not, ONNX Runtime if the export gated the file
    there too, else the model refuses to load, naming what to install (issue 20, finding 9)."""
    assert choose_backend("openvino", False, None, None) == ("openvino", "")
    backend, note = choose_backend("openvino", False, None, "no module named openvino", True)
    assert backend == "onnxruntime" and "gated it on ONNX Runtime" in note
    with pytest.raises(RuntimeError, match=r"pip install openvino.*ONNX Runtime, never gated"):
        choose_backend("openvino", False, None, "no module named openvino", False)
    assert choose_backend("", True, None, None) == ("tensorrt", "")
    assert choose_backend("", True, "no CUDA", None)[0] == "onnxruntime"


def test_an_int8_export_adds_an_openvino_python_model_and_an_openvino_backend_model(
    tmp_path: Path,
) -> None:
    from gendeploy.export.api import export
    from gendeploy.export.options import ExportOptions, ModelSpec

    checkpoint = make_checkpoint(TINY_CONDITIONAL, tmp_path / "c.pt")
    out = tmp_path / "export"
    export(ModelSpec(checkpoint=checkpoint), ExportOptions(int8=True, max_batch=8), "tinyq", out)
    manifest = load_manifest(out)
    written = {m.name for m in write_repo(out, tmp_path / "repo")}
    assert {"tinyq", "tinyq_int8", "tinyq_onnx", "tinyq_openvino"} <= written
    python = parse_config((tmp_path / "repo" / "tinyq_int8" / "config.pbtxt").read_text())
    assert python.backend == "python"
    assert python.parameters["runtime"].string_value == "openvino"
    assert python.parameters["gendeploy_artifact"].string_value == "int8"
    files = sorted(p.name for p in (tmp_path / "repo" / "tinyq_int8" / "1").iterdir())
    has_ir = "int8_ir" in {a.name for a in manifest.artifacts}
    expected = ["manifest.json", "model.onnx", "model.py"]
    assert files == sorted(expected + (["model.bin", "model.xml"] if has_ir else []))
    assert (tmp_path / "repo" / "tinyq_int8" / "1" / "model.onnx").read_bytes() == (
        out / "int8.onnx"
    ).read_bytes()
    backend = parse_config((tmp_path / "repo" / "tinyq_openvino" / "config.pbtxt").read_text())
    assert backend.backend == "openvino" and "seed" not in [i.name for i in backend.input]
    served = sorted(p.name for p in (tmp_path / "repo" / "tinyq_openvino" / "1").iterdir())
    assert served == (["model.bin", "model.xml"] if has_ir else ["model.onnx"])
    assert backend.default_model_filename == ("" if has_ir else "model.onnx")


def test_trt_config_takes_max_batch_from_the_engine_profile() -> None:
    manifest = dcgan64_manifest()
    options = RepoOptions(max_batch_size=64)
    config = model_config(manifest, manifest.artifact("trt_fp16"), "m", "trt", options, True)
    assert config.platform == "tensorrt_plan"
    assert config.max_batch_size == 32
    assert [i.name for i in config.input] == ["z", "labels"]
    assert list(config.input[1].reshape.shape) == []  # the engine gets labels as (N,)


def test_parse_config_rejects_unknown_fields_and_bad_enums() -> None:
    with pytest.raises(ServeError, match=r"invalid config\.pbtxt"):
        parse_config('name: "m" max_batch: 4')
    with pytest.raises(ServeError, match=r"invalid config\.pbtxt"):
        parse_config('name: "m" instance_group { kind: KIND_TPU }')


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    cond = make_checkpoint(TINY_CONDITIONAL, root / "cond.pt")
    cond2 = make_checkpoint(TINY_CONDITIONAL, root / "cond2.pt", seed=1)
    uncond = make_checkpoint(TINY_UNCONDITIONAL, root / "uncond.pt")
    return {
        "cond": build_export(cond, root / "cond", "tinyc"),
        "cond_retrained": build_export(cond2, root / "cond2", "tinyc"),
        "uncond": build_export(uncond, root / "uncond", "tinyu"),
    }


def test_repo_has_python_uint8_and_onnx_models_with_their_files(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    written = write_repo(exports["cond"], tmp_path / "repo")
    assert [(m.name, m.version, m.new) for m in written] == [
        ("tinyc", 1, True),
        ("tinyc_uint8", 1, True),
        ("tinyc_onnx", 1, True),
    ]
    python_model = tmp_path / "repo" / "tinyc"
    assert sorted(p.name for p in (python_model / "1").iterdir()) == [
        "manifest.json",
        "model.onnx",
        "model.py",
    ]
    assert load_manifest(python_model / "1").name == "tinyc"
    config = parse_config((python_model / "config.pbtxt").read_text())
    assert config.backend == "python"
    assert [(i.name, i.optional) for i in config.input] == [
        ("z", True),
        ("seed", True),
        ("labels", False),
    ]
    assert config.dynamic_batching.max_queue_delay_microseconds == 0  # Triton's default
    assert config.max_batch_size == load_manifest(exports["cond"]).batch.max
    uint8 = parse_config((tmp_path / "repo" / "tinyc_uint8" / "config.pbtxt").read_text())
    assert model_config_pb2.DataType.Name(uint8.output[0].data_type) == "TYPE_UINT8"
    assert list(uint8.output[0].dims) == [32, 32, 1]
    onnx = parse_config((tmp_path / "repo" / "tinyc_onnx" / "config.pbtxt").read_text())
    assert onnx.platform == "onnxruntime_onnx"
    assert "seed" not in [i.name for i in onnx.input]
    assert not list(tmp_path.glob("repo/*/.staging-*"))


def test_identical_export_adds_no_version_and_a_new_one_adds_n_plus_1(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    options = RepoOptions(keep_versions=2)
    write_repo(exports["cond"], repo, options)
    again = write_repo(exports["cond"], repo, options)
    assert [(m.version, m.new) for m in again] == [(1, False)] * 3
    retrained = write_repo(exports["cond_retrained"], repo, options)
    assert [(m.version, m.new) for m in retrained] == [(2, True)] * 3
    assert sorted(p.name for p in (repo / "tinyc").iterdir() if p.is_dir()) == ["1", "2"]
    write_repo(exports["cond"], repo, options)  # differs from version 2: becomes version 3
    assert sorted(p.name for p in (repo / "tinyc").iterdir() if p.is_dir()) == ["2", "3"]
    config = parse_config((repo / "tinyc" / "config.pbtxt").read_text())
    assert config.version_policy.latest.num_versions == 1


def test_two_exports_share_one_repo(exports: dict[str, Path], tmp_path: Path) -> None:
    write_repo(exports["cond"], tmp_path / "repo")
    write_repo(exports["uncond"], tmp_path / "repo")
    names = sorted(p.name for p in (tmp_path / "repo").iterdir())
    assert names == ["tinyc", "tinyc_onnx", "tinyc_uint8", "tinyu", "tinyu_onnx", "tinyu_uint8"]
    config = parse_config((tmp_path / "repo" / "tinyu" / "config.pbtxt").read_text())
    assert [i.name for i in config.input] == ["z", "seed"]


def test_a_file_changed_after_export_is_refused_before_anything_is_written(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "export"
    broken.mkdir()
    for f in exports["uncond"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "uint8.onnx").write_bytes(b"not the exported model")
    with pytest.raises(ServeError, match="does not match its sha256"):
        write_repo(broken, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
    (broken / "uint8.onnx").unlink()
    with pytest.raises(ServeError, match="missing"):
        write_repo(broken, tmp_path / "repo")


def test_a_directory_without_manifest_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no manifest"):
        write_repo(tmp_path, tmp_path / "repo")
    result = CliRunner().invoke(app, ["repo", str(tmp_path), "--repo", str(tmp_path / "r")])
    assert result.exit_code != 0


def test_repo_command_writes_the_repo(exports: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    args = ["repo", str(exports["uncond"]), "--repo", str(repo), "--queue-delay-us", "500"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "new version" in result.output
    config = parse_config((repo / "tinyu" / "config.pbtxt").read_text())
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    # no queue policy by default: a limit turns off the batcher's prefetching (500 ms stalls)
    assert not config.dynamic_batching.HasField("default_queue_policy")
    args += ["--max-queue-size", "64"]
    assert CliRunner().invoke(app, args).exit_code == 0
    limited = parse_config((repo / "tinyu" / "config.pbtxt").read_text())
    assert limited.dynamic_batching.default_queue_policy.max_queue_size == 64


def test_bad_repo_options_are_refused() -> None:
    with pytest.raises(ServeError, match="model name"):
        RepoOptions(name="a/b")
    with pytest.raises(ServeError, match="max-batch-size"):
        RepoOptions(max_batch_size=0)
    with pytest.raises(ServeError, match=r"--keep-versions must be >= 2 .*got 1$"):
        RepoOptions(keep_versions=1)


def test_seed_latents_follow_the_documented_pcg64_rng() -> None:
    z = draw_latents(np.array([[42], [7]]), 16)
    assert z.dtype == np.float32 and z.shape == (2, 16)
    expected = np.random.default_rng(42).standard_normal(16, dtype=np.float32)
    np.testing.assert_array_equal(z[0], expected)
    np.testing.assert_array_equal(draw_latents([7], 16)[0], z[1])


def test_the_served_model_file_imports_no_gendeploy_and_draws_what_gendeploy_draws(
    tmp_path: Path,
) -> None:
    """The NGC container has no gendeploy: the served model.py carries the seed RNG itself."""
    import ast
    import subprocess
    import sys

    source = served_model_source()
    imported = [
        n.module or "" for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)
    ] + [a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("gendeploy")]
    (tmp_path / "model.py").write_text(source)
    check = (
        "import sys; sys.modules['gendeploy'] = None; import model; "
        "print(model.draw_latents([42], 4).tolist(), model.draw_noise([3], [[2]])[0].tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"{draw_latents([42], 4).tolist()} {draw_noise([3], [[2]])[0].tolist()}"


@pytest.mark.parametrize(
    ("z", "seed", "labels", "message"),
    [
        (np.full((1, 4), np.nan, np.float32), None, np.array([[0]]), "NaN"),
        (np.zeros((1, 4), np.float32), None, np.array([[3]]), "out of range"),
        (np.zeros((1, 4), np.float32), None, np.array([[-1]]), "out of range"),
        (np.zeros((1, 4), np.float32), None, None, "conditional"),
        (np.zeros((2, 4), np.float32), None, np.array([[0]]), "batch"),
        (None, None, np.array([[0]]), "exactly one"),
        (np.zeros((1, 4), np.float32), np.array([[1]]), np.array([[0]]), "exactly one"),
        (None, np.array([[-5]]), np.array([[0]]), "seed must be"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(
    z: np.ndarray | None, seed: np.ndarray | None, labels: np.ndarray | None, message: str
) -> None:
    with pytest.raises(RequestError, match=message):
        parse_request(z, seed, labels, latent_dim=4, num_classes=3)


def test_a_seed_request_gets_the_seeds_latents() -> None:
    z, labels = parse_request(None, np.array([[5], [6]]), np.array([[1], [2]]), 4, 3)
    np.testing.assert_array_equal(z, draw_latents([5, 6], 4))
    assert labels is not None and labels.tolist() == [1, 2]


def test_docker_command_uses_the_container_whose_tensorrt_matches_the_engine(
    tmp_path: Path,
) -> None:
    manifest = dcgan64_manifest()
    for name, kind, artifact in (
        ("dcgan64", "python", "fp32"),
        ("dcgan64_onnx", "onnx", "fp32"),
        ("dcgan64_trt", "trt", "trt_fp16"),
    ):
        (tmp_path / name / "1").mkdir(parents=True)
        spec = manifest.artifact(artifact)
        config = model_config(manifest, spec, name, kind, RepoOptions(), gpu=True)
        (tmp_path / name / "config.pbtxt").write_text(config_text(config))
    version_dir = tmp_path / "dcgan64" / "1"
    (version_dir / "manifest.json").write_text(manifest.to_json())
    command, why, tag = docker_command(tmp_path)
    assert tag == "24.08" and "nvcr.io/nvidia/tritonserver:24.08-py3" in command
    # only the models the image can run are mounted, read-only: not the python model (the NGC
    # image has no onnxruntime for it), and nothing can be loaded later (model control "none")
    for model in ("dcgan64_onnx", "dcgan64_trt"):
        assert f"-v {tmp_path.resolve() / model}:/models/{model}:ro" in command
    assert f"{tmp_path.resolve() / 'dcgan64'}:" not in command
    assert "-p127.0.0.1:8000:8000 -p127.0.0.1:8001:8001 -p127.0.0.1:8002:8002" in command
    assert "--model-control-mode=none" in command and "--load-model" not in command
    assert "--user=triton-server" in command
    assert "10.3" in why and "unverified" in why
    with pytest.raises(
        ServeError, match=r"^unknown TensorRT version 99\.1\.0: pick the NGC tag whose TensorRT is"
    ):
        container_tag("99.1.0")
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--docker"])
    assert result.exit_code == 0 and "docker run" in result.output
    assert "tritonserver:24.08-py3 bash -c 'dpkg -l | grep -i nvinfer'" in result.output
    assert json.loads((version_dir / "manifest.json").read_text())["name"] == "dcgan64"


def with_engine(export_dir: Path, dest: Path) -> Path:
    """A copy of an export plus ``trt_fp16`` and ``trt_fp16_uint8`` artifacts. The plans' bytes are
    opaque to the repo writer (no TensorRT here to build real ones): only layout and configs are
    checked."""
    dest.mkdir()
    for f in export_dir.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    manifest = load_manifest(dest)
    extra = {"tensorrt": "10.8.0.43", "profile": {"min": 1, "opt": 4, "max": manifest.batch.max}}
    for source, engine in (("fp32", "trt_fp16"), ("uint8", "trt_fp16_uint8")):
        (dest / f"{engine}.plan").write_bytes(f"{engine} bytes".encode())
        spec = manifest.artifact(source)
        manifest.artifacts.append(
            Artifact(
                engine,
                ArtifactKind.tensorrt,
                f"{engine}.plan",
                Precision.fp16,
                spec.inputs,
                spec.output,
                extra=extra,
            )
        )
    (dest / "manifest.json").write_text(manifest.to_json())
    return dest


def test_an_export_with_an_engine_adds_a_tensorrt_model_and_targets_the_gpu(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    export_dir = with_engine(exports["cond"], tmp_path / "export")
    written = write_repo(export_dir, tmp_path / "repo")
    assert [m.name for m in written] == ["tinyc", "tinyc_uint8", "tinyc_onnx", "tinyc_trt"]
    repo = tmp_path / "repo"
    assert (repo / "tinyc_trt" / "1" / "model.plan").read_bytes() == b"trt_fp16 bytes"
    # the python models prefer their engine on GPU: float NCHW and uint8 NHWC each get their own
    assert (repo / "tinyc" / "1" / "model.plan").read_bytes() == b"trt_fp16 bytes"
    assert (repo / "tinyc_uint8" / "1" / "model.plan").read_bytes() == b"trt_fp16_uint8 bytes"
    trt = parse_config((repo / "tinyc_trt" / "config.pbtxt").read_text())
    assert trt.platform == "tensorrt_plan" and trt.max_batch_size == 8
    onnx = parse_config((repo / "tinyc_onnx" / "config.pbtxt").read_text())
    accelerator = onnx.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    python = parse_config((repo / "tinyc" / "config.pbtxt").read_text())
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(python.instance_group[0].kind) == (
        "KIND_GPU"
    )
    command, _, _ = docker_command(repo)
    assert "tritonserver:25.01-py3" in command
    with pytest.raises(ServeError, match="exceeds the TensorRT engine's profile"):
        write_repo(export_dir, tmp_path / "repo2", RepoOptions(max_batch_size=16))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_generate_without_a_server_is_a_one_line_error(protocol: str, tmp_path: Path) -> None:
    from gendeploy.serve.server import free_port

    url = f"127.0.0.1:{free_port()}"
    out = tmp_path / "grid.png"
    args = ["generate", "--url", url, "--protocol", protocol, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, ServeError)
    assert "\n" not in str(result.exception)
    assert not out.exists()


def test_a_forced_re_export_of_the_same_model_adds_no_version(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    from gendeploy.export.api import export
    from gendeploy.export.options import ExportOptions, ModelSpec
    from gendeploy.manifest import OutputKind

    first = load_manifest(exports["cond"])
    repo = tmp_path / "repo"
    write_repo(exports["cond"], repo)
    out = tmp_path / "again"
    options = ExportOptions(output=OutputKind.uint8, max_batch=first.batch.max)
    spec = ModelSpec(checkpoint=Path(first.source.path))
    export(spec, options, name=first.name, out=out, command="first")
    export(spec, options, name=first.name, out=out, force=True, command="--force")
    again = load_manifest(out)
    assert [a.sha256 for a in again.artifacts] == [a.sha256 for a in first.artifacts]
    assert again.command != first.command  # only the record of the run differs
    written = write_repo(out, repo)
    assert [(m.name, m.version, m.new) for m in written] == [
        ("tinyc", 1, False),
        ("tinyc_uint8", 1, False),
        ("tinyc_onnx", 1, False),
    ]


@pytest.mark.parametrize("kind", ["run", "export", "file"])
def test_repo_refuses_a_directory_that_is_not_a_model_repository(
    kind: str, exports: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "target"
    if kind == "run":  # a training run: config.json, checkpoint.pt, samples/
        (target / "samples").mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "checkpoint.pt").write_bytes(b"weights")
    elif kind == "export":
        target = exports["uncond"]
    else:
        target.write_text("notes")

    def snapshot() -> list[tuple[str, bytes]]:
        files = [target] if target.is_file() else sorted(target.rglob("*"))
        return [(str(p), p.read_bytes() if p.is_file() else b"") for p in files]

    before = snapshot()
    result = CliRunner().invoke(app, ["repo", str(exports["cond"]), "--repo", str(target)])
    assert result.exit_code != 0
    assert isinstance(result.exception, ServeError)
    why = "is a file" if kind == "file" else "is neither empty nor a Triton model repository"
    assert why in str(result.exception)
    assert snapshot() == before


def test_repo_writes_into_a_new_empty_readme_only_or_existing_repository(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    readme_only = tmp_path / "triton_repo"
    readme_only.mkdir()
    (readme_only / "README.md").write_text("generated")
    for repo in (tmp_path / "new", readme_only, readme_only):  # the last: a repository now
        assert next(m.name for m in write_repo(exports["uncond"], repo)).startswith("tinyu")
    write_repo(exports["cond"], readme_only)  # a second export beside the first
    assert (readme_only / "tinyc" / "config.pbtxt").is_file()


def test_the_served_onnx_runtime_session_sleeps_instead_of_spinning(tmp_path: Path) -> None:
    """Spinning intra-op workers stalled served requests by 100 ms and more on 2 cores shared with
    Triton and its clients: the python model's session must not spin."""
    import torch

    from gendeploy.serve.backend_model import ORT_SPINNING, _OrtEngine

    path = tmp_path / "m.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), path, dynamo=False)
    engine = _OrtEngine(str(path), gpu=False, threads=2)
    options = engine.session.get_session_options()
    assert options.get_session_config_entry(ORT_SPINNING) == "0"
    assert options.intra_op_num_threads == 2


def test_the_served_engine_shares_the_cpus_serve_sized_among_the_models_instances(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two instances of two threads on two cores fight over them: the CPUs `gendeploy serve`
    passes (GENDEPLOY_THREADS), else those the stub may run on, are split between the
    instances; a count in the config wins."""
    from gendeploy.serve.backend_model import engine_threads

    monkeypatch.setenv("GENDEPLOY_THREADS", "2")
    assert [engine_threads(0, n) for n in (1, 2, 3)] == [2, 1, 1]
    assert engine_threads(2, 2) == 2
    monkeypatch.delenv("GENDEPLOY_THREADS")
    mine = len(os.sched_getaffinity(0))
    assert [engine_threads(0, n) for n in (1, 2)] == [mine, max(1, mine // 2)]


def test_a_noise_model_on_cpu_gets_two_instances_and_every_other_model_one(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    """On CPU the python model of a noise-to-image export is served by two instances (one runs
    a batch while the other takes the next, bench/tune); the C++ backends' models, a GPU's and
    an explicit --instances keep their count."""
    manifest = dcgan64_manifest()
    fp32 = manifest.artifact("fp32")
    counts = {
        (kind, gpu): model_config(manifest, fp32, "m", kind, RepoOptions(), gpu)
        .instance_group[0]
        .count
        for kind, gpu in [("python", False), ("python", True), ("onnx", False), ("openvino", False)]
    }
    assert counts == {
        ("python", False): 2,
        ("python", True): 1,
        ("onnx", False): 1,
        ("openvino", False): 1,
    }
    one = model_config(manifest, fp32, "m", "python", RepoOptions(instances=3), False)
    assert one.instance_group[0].count == 3
    written = write_repo(exports["uncond"], tmp_path / "repo")
    python = parse_config((tmp_path / "repo" / written[0].name / "config.pbtxt").read_text())
    assert python.instance_group[0].count == 2
    with pytest.raises(ServeError, match="instances must be >= 0"):
        RepoOptions(instances=-1)
