"""The Triton model repository, written from an export's manifest.

Which artifact each model serves is the export plan's (``manifest.PLAN``: its ``served_in`` and
``native`` columns). Models written for an export named ``<name>``:

- ``<name>``: python backend running the ``fp32`` ONNX (ONNX Runtime; the TensorRT engine when it
  exists and TensorRT imports): serves on any Triton with the python backend, the pip one included.
  Takes ``z`` or ``seed`` (the server draws z, see ``backend_model.draw_latents``).
- ``<name>_uint8``: the same for the ``uint8`` artifact (UINT8 NHWC images), when exported, with
  the ``trt_fp16_uint8`` engine when it exists.
- ``<name>_onnx``: ``platform: "onnxruntime_onnx"`` for the NGC container (KIND_GPU with the ONNX
  Runtime TensorRT accelerator in FP16 for GPU targets); the ONNX's own inputs (``z``, labels,
  truncation and noise tensors where the export has them), no seed.
- ``<name>_trt``: ``platform: "tensorrt_plan"`` when a ``trt_fp16`` engine exists; the same inputs.
- ``<name>_int8`` (and ``<name>_int8_uint8``): python backend serving the ``int8`` artifact with
  OpenVINO where it imports (INT8 kernels), else ONNX Runtime; the ``trt_int8`` engine on GPU.
- ``<name>_openvino``: ``backend: "openvino"`` (Triton's OpenVINO backend in the NGC container) on
  the ``int8`` artifact (the IR when the export kept one, else the QDQ ONNX); ``z`` only.

The python models take ``truncation`` as an optional input and draw noise inputs themselves
(from ``seed``, or ``noise_seed`` with z); see ``backend_model``.

An image-to-image export (the manifest's ``image``) gets the same models; its python ones take
``image`` (UINT8 [H, W, C]) or ``image_bytes`` (a PNG or JPEG file), refuse requests over
``max_megapixels``, and tile (``gendeploy/tiling.py``, copied beside ``model.py``); its ``_onnx``,
``_trt`` and ``_openvino`` siblings take the ONNX's float ``input_images`` [C, -1, -1], height and
width dynamic (the TensorRT engine's within its profile: one tile window at most).

Every ``config.pbtxt`` is built through Triton's protobuf (``model_config_pb2``). Each write stages
the version directory beside its model, renames it to version N+1, and writes ``config.pbtxt`` last
(atomically); an export identical to the latest version adds nothing (the manifest's record of
the export run, its time, command and timings, aside). Older versions beyond ``keep_versions`` (at
least 2, so the version being served is never removed before the server reloads) are removed; the
version policy serves the latest. A directory that is neither empty nor a model repository is
refused.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gendeploy import seeds as seeds_module
from gendeploy import tiling as tiling_module
from gendeploy.errors import ServeError
from gendeploy.fileio import atomic_write
from gendeploy.manifest import (
    INPUT_IMAGES,
    MANIFEST_NAME,
    PLAN,
    Artifact,
    ArtifactKind,
    Manifest,
    Native,
    Runtime,
    TensorSpec,
    load_manifest,
    sha256_file,
)
from gendeploy.seeds import SERVED_MARK

BACKEND_MODEL = Path(__file__).with_name("backend_model.py")
# the one gendeploy import of backend_model.py: the served model.py holds that code instead
SEEDS_IMPORT = (
    "# served: replaced by the code of gendeploy/seeds.py (serve.repo.served_model_source)\n"
    "from gendeploy.seeds import MAX_SEED, draw_latents, draw_noise\n"
)
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "uint8": "TYPE_UINT8",
}


@dataclass(frozen=True)
class RepoOptions:
    """How the exported models are served."""

    name: str | None = None  # default: the export's name
    max_batch_size: int | None = None  # default: the export's batch profile max
    # 0: a batch goes as soon as an instance can take it (requests that arrive meanwhile join
    # the next one); a delay made every request at low concurrency wait it out (docs/served-path.md)
    queue_delay_us: int = 0
    # 0: CPU_INSTANCES for a noise-to-image python model on CPU (while one instance runs a batch
    # the other takes the next: on 2 cores at 4 clients 2 x 1 thread served 0.94x / 0.81x
    # in-process batch 1 over HTTP / gRPC, 1 x 2 threads 0.67x / 0.63x, bench/tune_instances),
    # else 1 (a GPU's engine, Triton's C++ backends, an image model's tiles)
    instances: int = 0
    keep_versions: int = 2
    gpu: bool | None = None  # default: True when the export has a TensorRT engine
    intra_op_threads: int = 0  # python model: engine threads per instance, 0 = CPUs / instances
    # requests waiting beyond this are refused at once (UNAVAILABLE / HTTP 503); 0 = no limit,
    # Triton's default and ours: any limit turns off the dynamic batcher's payload prefetching,
    # and then a request that arrives while the instance finishes a batch can wait out the
    # batcher's 500 ms idle timer (docs/served-path.md)
    max_queue_size: int = 0
    # image-to-image: a request holds at most this many input pixels (2048 x 2048 fits)
    max_megapixels: float = 4.2

    def __post_init__(self) -> None:
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ServeError(f"model name {self.name!r} must be letters, digits, '_', '-' or '.'")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ServeError(f"--max-batch-size must be >= 1, got {self.max_batch_size}")
        if self.queue_delay_us < 0 or self.instances < 0 or self.max_queue_size < 0:
            raise ServeError("queue delay, max queue size and instances must be >= 0")
        if not self.max_megapixels > 0:
            raise ServeError(f"--max-megapixels must be > 0, got {self.max_megapixels}")
        if self.keep_versions < 2:
            raise ServeError(
                f"--keep-versions must be >= 2 (the served version stays until the server "
                f"reloads), got {self.keep_versions}"
            )


@dataclass
class ModelPlan:
    """One model to write: its config and the files of its new version."""

    name: str
    config: Any  # model_config_pb2.ModelConfig
    files: dict[str, Path]  # name in the version dir -> source file
    texts: dict[str, str] = field(default_factory=dict)  # name in the version dir -> content


@dataclass(frozen=True)
class WrittenModel:
    name: str
    version: int
    new: bool  # False: identical to the latest version already there
    path: Path


def _dims(spec: TensorSpec) -> list[int]:
    return [int(d) for d in spec.shape[1:]]  # drop the batch axis


def _triton_type(spec: TensorSpec) -> str:
    try:
        return TRITON_DTYPES[spec.dtype]
    except KeyError:
        raise ServeError(f"tensor {spec.name!r} has dtype {spec.dtype!r}, not servable") from None


def _io(
    artifact: Artifact, with_seed: bool, noise_seed: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Config inputs and outputs. The python model (``with_seed``) also takes ``seed``, leaves
    ``truncation`` optional, and draws noise inputs itself (``noise_seed`` for z requests)."""
    inputs: list[dict[str, Any]] = []
    for spec in artifact.inputs:
        if with_seed and spec.name.startswith("noise_"):
            continue  # drawn by the server from the request's seed
        entry: dict[str, Any] = {"name": spec.name, "data_type": _triton_type(spec)}
        if spec.name in ("z", "truncation") and with_seed:
            entry["optional"] = True
        if len(spec.shape) == 1:  # labels (N,): Triton needs dims, the model gets rank 1
            entry["dims"] = [1]
            if not with_seed:
                entry["reshape"] = {"shape": []}
        else:
            entry["dims"] = _dims(spec)
        inputs.append(entry)
    if with_seed:
        inputs.insert(1, {"name": "seed", "data_type": "TYPE_INT64", "dims": [1], "optional": True})
        if noise_seed:
            inputs.append(
                {"name": "noise_seed", "data_type": "TYPE_INT64", "dims": [1], "optional": True}
            )
    out = artifact.output
    outputs = [{"name": out.name, "data_type": _triton_type(out), "dims": _dims(out)}]
    return inputs, outputs


def _warmup(
    inputs: list[dict[str, Any]], dims: dict[str, list[int]] | None = None
) -> list[dict[str, Any]]:
    """One batch-1 request of zeros: every input but the alternatives the model fills itself;
    ``dims`` gives the inputs whose dims are dynamic (-1) the shape to warm up at."""
    dims = dims or {}
    zeros = {
        i["name"]: {
            "data_type": i["data_type"],
            "dims": dims.get(i["name"], i["dims"]),
            "zero_data": True,
        }
        for i in inputs
        if i["name"] not in ("seed", "truncation", IMAGE_BYTES_INPUT)
    }
    return [{"name": "zeros_batch_1", "batch_size": 1, "inputs": zeros}]


def _batching(options: RepoOptions) -> dict[str, Any]:
    """Dynamic batching; a queue policy only where a limit is asked for (see ``RepoOptions``)."""
    batching: dict[str, Any] = {"max_queue_delay_microseconds": options.queue_delay_us}
    if options.max_queue_size:
        batching["default_queue_policy"] = {"max_queue_size": options.max_queue_size}
    return batching


IMAGE_INPUT, IMAGE_BYTES_INPUT, IMAGE_OUTPUT = "image", "image_bytes", "images"  # backend_model's
TILE_BATCH = 4  # windows a python model runs at once (the TensorRT profile allows up to 8)


def _image_io(
    manifest: Manifest, artifact: Artifact, kind: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """An image-to-image model's inputs, outputs and warm-up (one tile window of zeros)."""
    image = manifest.image
    assert image is not None
    window = min(image.tile.size + 2 * image.tile.margin, 256)
    if kind != "python":  # the ONNX's own float NCHW tensors, height and width dynamic
        inputs, outputs = _io(artifact, with_seed=False)
        warm = {INPUT_IMAGES: [image.in_channels, window, window]}
        return inputs, outputs, _warmup(inputs, warm)
    inputs = [
        {"name": IMAGE_INPUT, "data_type": "TYPE_UINT8", "dims": [-1, -1, -1], "optional": True},
        {"name": IMAGE_BYTES_INPUT, "data_type": "TYPE_STRING", "dims": [1], "optional": True},
    ]
    outputs = [{"name": IMAGE_OUTPUT, "data_type": "TYPE_UINT8", "dims": [-1, -1, -1]}]
    return inputs, outputs, _warmup(inputs, {IMAGE_INPUT: [window, window, image.in_channels]})


CPU_INSTANCES = 2


def instance_count(options: RepoOptions, manifest: Manifest, kind: str, gpu: bool) -> int:
    """The model's instances: the option's count, else ``CPU_INSTANCES`` for a noise-to-image
    python model on CPU (its engine threads split the CPUs among them:
    ``backend_model.engine_threads``) and 1 for every other model."""
    if options.instances:
        return options.instances
    return CPU_INSTANCES if kind == "python" and not gpu and manifest.image is None else 1


def model_config(
    manifest: Manifest,
    artifact: Artifact,
    name: str,
    kind: str,
    options: RepoOptions,
    gpu: bool,
) -> Any:
    """The ``ModelConfig`` protobuf for ``kind`` in ("python", "onnx", "trt", "openvino")."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    max_batch = options.max_batch_size or manifest.batch.max
    instances = instance_count(options, manifest, kind, gpu)
    noise = bool(manifest.interface.noise)
    if manifest.image is not None:
        inputs, outputs, warmup = _image_io(manifest, artifact, kind)
    else:
        inputs, outputs = _io(artifact, with_seed=kind == "python", noise_seed=noise)
        warmup = _warmup(inputs)
    config: dict[str, Any] = {
        "name": name,
        "max_batch_size": max_batch,
        "version_policy": {"latest": {"num_versions": 1}},
        "input": inputs,
        "output": outputs,
        "instance_group": [{"kind": "KIND_GPU" if gpu else "KIND_CPU", "count": instances}],
        "dynamic_batching": _batching(options),
        "model_warmup": warmup,
        "parameters": {
            "gendeploy_export": {"string_value": manifest.name},
            "gendeploy_artifact": {"string_value": artifact.name},
            "latent_dim": {"string_value": str(manifest.latent_dim)},
            "num_classes": {"string_value": str(manifest.num_classes)},
        },
    }
    if kind == "python":
        config["backend"] = "python"
        config["parameters"]["onnx_file"] = {"string_value": "model.onnx"}
        config["parameters"]["engine_file"] = {"string_value": "model.plan"}
        config["parameters"]["intra_op_threads"] = {"string_value": str(options.intra_op_threads)}
        if artifact.variant.runtime is Runtime.openvino:  # it runs the QDQ layers in INT8
            config["parameters"]["runtime"] = {"string_value": "openvino"}
            config["parameters"]["openvino_file"] = {"string_value": "model.xml"}
            # the export gated it on ONNX Runtime too: where OpenVINO does not import, it may
            # run there (else it refuses to load: backend_model.choose_backend)
            runners = (artifact.validation or {}).get("runners", {})
            gated = any(k.startswith("onnxruntime") and v == "passed" for k, v in runners.items())
            config["parameters"]["onnxruntime_gated"] = {"string_value": str(gated).lower()}
        if manifest.image is not None:
            image = manifest.image
            config["parameters"].update(
                {
                    "max_megapixels": {"string_value": f"{options.max_megapixels:g}"},
                    "tile_batch": {"string_value": str(min(TILE_BATCH, max_batch))},
                    "image_input": {"string_value": INPUT_IMAGES},
                    "scale": {"string_value": str(image.scale)},
                    "in_channels": {"string_value": str(image.in_channels)},
                    "out_channels": {"string_value": str(image.out_channels)},
                }
            )
    elif kind == "openvino":
        # Triton's OpenVINO backend (NGC container): CPU only; reads model.xml/.bin, or the
        # file default_model_filename names (model.onnx)
        config["backend"] = "openvino"
        config["instance_group"] = [{"kind": "KIND_CPU", "count": instances}]
        if artifact.kind is ArtifactKind.onnx:
            config["default_model_filename"] = "model.onnx"
        config["parameters"]["PERFORMANCE_HINT"] = {"string_value": "LATENCY"}
        if options.intra_op_threads:
            threads = str(options.intra_op_threads)
            config["parameters"]["INFERENCE_NUM_THREADS"] = {"string_value": threads}
    elif kind == "onnx":
        config["platform"] = "onnxruntime_onnx"
        if gpu:
            trt = {
                "name": "tensorrt",
                "parameters": {"precision_mode": "FP16", "max_workspace_size_bytes": "1073741824"},
            }
            config["optimization"] = {
                "execution_accelerators": {"gpu_execution_accelerator": [trt]}
            }
    elif kind == "trt":
        config["platform"] = "tensorrt_plan"
        profile_max = artifact.extra.get("profile", {}).get("max") if artifact.extra else None
        config["max_batch_size"] = int(profile_max or max_batch)
    else:
        raise ServeError(f"unknown model kind {kind!r}")
    return json_format.ParseDict(config, model_config_pb2.ModelConfig())


def config_text(config: Any) -> str:
    from google.protobuf import text_format

    return str(text_format.MessageToString(config))


def parse_config(text: str) -> Any:
    """Parse ``config.pbtxt`` text with Triton's schema (unknown fields, bad enums fail)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ServeError(f"invalid config.pbtxt: {e}") from None


def plan_models(manifest: Manifest, export_dir: Path, options: RepoOptions) -> list[ModelPlan]:
    """The models (configs + files) to write for one export: a python model for each
    ``served_in`` of the plan whose ONNX the export has (with the IR and the engine served in it),
    then a model for each native backend that serves one of its artifacts."""
    built = {a.name: a for a in manifest.artifacts}
    base = options.name or re.sub(r"[^A-Za-z0-9_.-]", "_", manifest.name)
    engine = _natively_served(manifest, Native.trt)
    has_engine = any(a.kind is ArtifactKind.tensorrt for a in manifest.artifacts)
    gpu = options.gpu if options.gpu is not None else has_engine
    manifest_text = manifest.to_json()
    plans: list[ModelPlan] = []
    if "fp32" not in built:
        raise ServeError(f"export {manifest.name!r} has no 'fp32' artifact to serve")
    profile_max = (engine.extra.get("profile") or {}).get("max") if engine else None
    if profile_max and options.max_batch_size and options.max_batch_size > int(profile_max):
        raise ServeError(
            f"--max-batch-size {options.max_batch_size} exceeds the TensorRT engine's profile "
            f"max {profile_max}; re-export with --max-batch {options.max_batch_size}"
        )
    for suffix, served in _python_models(manifest).items():
        onnx_artifact = next((a for a in served if a.kind is ArtifactKind.onnx), None)
        if onnx_artifact is None:
            continue
        files: dict[str, Path] = {}
        for artifact in served:  # the ONNX, the IR OpenVINO reads first, the engine for GPUs
            files.update(_served_files(export_dir, artifact))
        config = model_config(manifest, onnx_artifact, base + suffix, "python", options, gpu)
        texts = {"model.py": served_model_source(), MANIFEST_NAME: manifest_text}
        if manifest.image is not None:  # the served model tiles with this very file
            texts["tiling.py"] = Path(tiling_module.__file__ or "").read_text()
        plans.append(ModelPlan(base + suffix, config, files, texts))
    for native in Native:
        natively = _natively_served(manifest, native)
        if natively is not None:
            name = f"{base}_{native.value}"
            on_gpu = {Native.onnx: gpu, Native.openvino: False, Native.trt: True}[native]
            config = model_config(manifest, natively, name, native.value, options, on_gpu)
            plans.append(ModelPlan(name, config, _served_files(export_dir, natively)))
    return plans


def _python_models(manifest: Manifest) -> dict[str, list[Artifact]]:
    """The export's artifacts by the python model that serves them (its name's suffix), in the
    plan's order."""
    models: dict[str, list[Artifact]] = {}
    for variant in PLAN:
        artifact = manifest.find(variant.name)
        if variant.served_in is not None and artifact is not None:
            models.setdefault(variant.served_in, []).append(artifact)
    return models


def _natively_served(manifest: Manifest, native: Native) -> Artifact | None:
    """The artifact ``native`` serves: of those the plan gives it, the last the export has (the
    IR, when kept, rather than the QDQ ONNX)."""
    found = [manifest.find(v.name) for v in PLAN if v.native is native]
    return next((a for a in reversed(found) if a is not None), None)


def _served_files(export_dir: Path, artifact: Artifact) -> dict[str, Path]:
    """An artifact's files under the names the served models read."""
    if artifact.kind is ArtifactKind.openvino:
        return _ir_files(export_dir, artifact)
    if artifact.kind is ArtifactKind.tensorrt:
        return {"model.plan": _artifact_file(export_dir, artifact)}
    return _onnx_files(export_dir, artifact)


def served_model_source() -> str:
    """The python model's ``model.py``: ``backend_model.py`` with its one gendeploy import (the
    seed RNG) replaced by that code, so that it runs where gendeploy is not installed (the NGC
    container) and draws exactly what every other path draws."""
    source = BACKEND_MODEL.read_text()
    if source.count(SEEDS_IMPORT) != 1:
        raise ServeError(f"{BACKEND_MODEL.name} must import the seed RNG once: {SEEDS_IMPORT}")
    seeds = Path(seeds_module.__file__ or "").read_text()
    served = seeds[seeds.index(SERVED_MARK) + len(SERVED_MARK) :].strip("\n")
    return source.replace(SEEDS_IMPORT, served + "\n")


def _onnx_files(export_dir: Path, artifact: Artifact) -> dict[str, Path]:
    files = {"model.onnx": _artifact_file(export_dir, artifact)}
    sidecar = files["model.onnx"].with_name(files["model.onnx"].name + ".data")
    if sidecar.is_file():  # external weights keep the file name the ONNX refers to
        files[sidecar.name] = sidecar
    return files


def _ir_files(export_dir: Path, artifact: Artifact) -> dict[str, Path]:
    """An OpenVINO IR's two files, under the names OpenVINO and Triton's backend look for."""
    xml = _artifact_file(export_dir, artifact)
    weights = xml.with_suffix(".bin")
    digest = artifact.extra.get("bin_sha256")
    if not weights.is_file() or (digest and sha256_file(weights) != digest):
        raise ServeError(f"{weights} is missing or changed since export; re-run `gendeploy export`")
    return {"model.xml": xml, "model.bin": weights}


def _artifact_file(export_dir: Path, artifact: Artifact) -> Path:
    path = export_dir / artifact.path
    if not path.is_file():
        raise ServeError(f"{path} named by the manifest is missing; re-run `gendeploy export`")
    if artifact.sha256 and sha256_file(path) != artifact.sha256:
        raise ServeError(f"{path} does not match its sha256 in the manifest; re-run the export")
    if artifact.kind not in (ArtifactKind.onnx, ArtifactKind.tensorrt, ArtifactKind.openvino):
        raise ServeError(f"artifact {artifact.name!r} has unknown kind {artifact.kind!r}")
    return path


def _versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _files(version_dir: Path) -> list[str]:
    # the python backend leaves __pycache__/ beside model.py once served: not part of a version
    return sorted(p.name for p in version_dir.iterdir() if p.is_file())


# What the manifest says about the export run, not about what is served: a re-export of the same
# model (``--force``) changes only these, and must not make a new version.
RUN_FIELDS = ("created", "command", "timings")


def _served_manifest(path: Path) -> Any:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: compared as different
    return (
        {k: v for k, v in data.items() if k not in RUN_FIELDS} if isinstance(data, dict) else data
    )


def _same_tree(a: Path, b: Path) -> bool:
    """The same files with the same bytes, the manifest's run fields aside."""
    names_a, names_b = _files(a), _files(b)
    if names_a != names_b:
        return False
    names = [n for n in names_a if n != MANIFEST_NAME]
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    if mismatch or errors:
        return False
    return MANIFEST_NAME not in names_a or _served_manifest(a / MANIFEST_NAME) == _served_manifest(
        b / MANIFEST_NAME
    )


def write_model(plan: ModelPlan, repo_dir: Path, keep_versions: int) -> WrittenModel:
    """Stage the version, rename it to N+1 (unless identical to the latest), then config.pbtxt."""

    model_dir = repo_dir / plan.name
    model_dir.mkdir(parents=True, exist_ok=True)
    versions = _versions(model_dir)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    staging.chmod(0o755)
    try:
        for dest, src in plan.files.items():
            shutil.copyfile(src, staging / dest)
        for dest, text in plan.texts.items():
            (staging / dest).write_text(text)
        latest = model_dir / str(versions[-1]) if versions else None
        if latest is not None and _same_tree(staging, latest):
            version, new = versions[-1], False
        else:
            version, new = (versions[-1] + 1 if versions else 1), True
            os.rename(staging, model_dir / str(version))
            versions.append(version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    config_path, text = model_dir / "config.pbtxt", config_text(plan.config)
    if not (config_path.is_file() and config_path.read_text() == text):
        # untouched when unchanged: watchers see no change
        atomic_write(config_path, lambda f: f.write(text.encode()))
    for old in versions[:-keep_versions]:
        shutil.rmtree(model_dir / str(old), ignore_errors=True)
    return WrittenModel(plan.name, version, new, model_dir)


def check_repo_dir(repo: Path) -> None:
    """Refuse to write into a directory that is neither empty nor a model repository (a training
    run, an export, anything else): nothing there is touched."""
    if repo.exists() and not repo.is_dir():
        raise ServeError(f"--repo {repo} is a file; pass a directory for the model repository")
    if not repo.exists():
        return
    strangers = sorted(p.name for p in repo.iterdir() if not _repo_entry(p))
    if strangers:
        shown = ", ".join(strangers[:3]) + (", ..." if len(strangers) > 3 else "")
        raise ServeError(
            f"--repo {repo} is neither empty nor a Triton model repository (it holds {shown}); "
            "choose a new or empty directory"
        )


def _repo_entry(path: Path) -> bool:
    """A model directory (config.pbtxt, or version directories so far), a README or a dotfile."""
    if path.name.startswith(".") or path.name.lower().startswith("readme"):
        return True
    if not path.is_dir():
        return False
    return (path / "config.pbtxt").is_file() or all(
        p.is_dir() and (p.name.isdigit() or p.name.startswith(".")) for p in path.iterdir()
    )


def write_repo(
    export: Manifest | Path | str,
    repo_dir: Path | str,
    options: RepoOptions | None = None,
    export_dir: Path | str | None = None,
) -> list[WrittenModel]:
    """Write (or add a version to) the Triton models of one export into ``repo_dir``.

    ``export`` is an export directory (or its manifest.json); a ``Manifest`` object needs
    ``export_dir`` for the files it names. All files are checked before anything is written.
    """
    options = options or RepoOptions()
    if isinstance(export, Manifest):
        if export_dir is None:
            raise ServeError("write_repo(manifest, ...) needs export_dir= for the files it names")
        manifest, root = export, Path(export_dir)
    else:
        root = Path(export)
        root = root.parent if root.is_file() else root
        manifest = load_manifest(root)
    plans = plan_models(manifest, root, options)
    repo = Path(repo_dir)
    check_repo_dir(repo)
    repo.mkdir(parents=True, exist_ok=True)
    return [write_model(plan, repo, options.keep_versions) for plan in plans]
