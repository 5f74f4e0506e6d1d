"""``gendeploy serve --docker``: the NGC Triton container command for GPU hosts.

A TensorRT engine loads only in the TensorRT version it was built with (build number included,
unless built version-compatible), so the tag is chosen from the version recorded in the served
export's manifest, and the printed command comes with a check of the image's own TensorRT.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from gendeploy.errors import ServeError
from gendeploy.serve.admin import ADMIN_HEADER, KEY_ENV, LOCKED_APIS
from gendeploy.serve.repo import parse_config

# TensorRT major.minor -> NGC tritonserver container. UNVERIFIED beyond 10.0 -> 24.05: the release
# notes read while writing this did not show each -py3 image's TensorRT. `tag_check` says how to
# confirm an image before serving; the table is a starting point, --docker-tag overrides it.
TRT_TO_CONTAINER = {
    "10.0": "24.05",
    "10.1": "24.06",
    "10.2": "24.07",
    "10.3": "24.08",
    "10.4": "24.09",
    "10.5": "24.10",
    "10.6": "24.11",
    "10.7": "24.12",
    "10.8": "25.01",
    "10.9": "25.03",
    "10.10": "25.05",
    "10.11": "25.06",
}
DEFAULT_TAG = "25.01"
NGC_PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan")


def engine_tensorrt_version(repo_dir: Path) -> str | None:
    """The TensorRT version of the newest engine recorded in the repo's manifests, if any."""
    for manifest in sorted(repo_dir.glob("*/[0-9]*/manifest.json"), reverse=True):
        data = json.loads(manifest.read_text())
        for artifact in data.get("artifacts", []):
            version = (artifact.get("extra") or {}).get("tensorrt")
            if artifact.get("kind") == "tensorrt" and version:
                return str(version)
    return None


def container_tag(trt_version: str | None) -> tuple[str, str]:
    """(tag, why) for the engine's TensorRT version; an unknown version is an error, not a guess."""
    if trt_version is None:
        return DEFAULT_TAG, "no TensorRT engine in the repo: any recent tag serves the ONNX models"
    major_minor = ".".join(trt_version.split(".")[:2])
    tag = TRT_TO_CONTAINER.get(major_minor)
    if tag is None:
        raise ServeError(
            f"unknown TensorRT version {trt_version}: pick the NGC tag whose TensorRT is "
            f"{major_minor} (NGC's Triton release notes) and pass --docker-tag"
        )
    return tag, (
        f"expected to ship TensorRT {major_minor} (unverified); the engine needs exactly "
        f"{trt_version}: check with the command below, or pass --docker-tag"
    )


def tag_check(tag: str) -> str:
    """The command that lists the TensorRT libraries inside the NGC image ``tag``."""
    return f"docker run --rm {image(tag)} bash -c 'dpkg -l | grep -i nvinfer'"


def image(tag: str) -> str:
    return f"nvcr.io/nvidia/tritonserver:{tag}-py3"


def container_models(repo_dir: Path) -> list[str]:
    """The models the NGC container runs with its own backends (ONNX Runtime, TensorRT).

    The python-backend models are left out: they import onnxruntime, which the image lacks."""

    return [
        config.parent.name
        for config in sorted(repo_dir.glob("*/config.pbtxt"))
        if parse_config(config.read_text()).platform in NGC_PLATFORMS
    ]


SHELL_KEY = f"${{{KEY_ENV}:?export it first}}"  # expanded by the user's shell; stops if unset


def tritonserver_args(
    key_ref: str, model_dir: str = "/models", models: list[str] | None = None
) -> list[str]:
    """The container's tritonserver command, every management API locked behind the admin key;
    ``key_ref`` is how the key is spelt where the command runs (``SHELL_KEY`` for a shell,
    ``$(GENDEPLOY_ADMIN_KEY)`` in a Kubernetes container).

    Without ``models``, everything under ``model_dir`` is served, fixed at start (model control
    "none": no client can load or unload): right where only the container's models are mounted.
    With ``models``, ``model_dir`` may hold more (a whole repository in an object store, or
    KServe's copy of it): model control "explicit" loads exactly ``models`` at start, and loading
    anything else needs the key (the model-repository API is locked)."""
    apis = ",".join(LOCKED_APIS)
    control = ["--model-control-mode=none"]
    if models is not None:
        control = ["--model-control-mode=explicit", *(f"--load-model={m}" for m in models)]
    return [
        "tritonserver",
        f"--model-repository={model_dir}",
        *control,
        "--disable-auto-complete-config",
        "--allow-sagemaker=false",
        "--allow-vertex-ai=false",
        f"--http-restricted-api={apis}:{ADMIN_HEADER}={key_ref}",
        f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={key_ref}",
    ]


def docker_command(
    repo_dir: Path, tag: str | None = None, gpus: bool = True
) -> tuple[str, str, str]:
    """(command, why the tag, tag) serving ``repo_dir`` on 127.0.0.1 ports 8000/8001/8002.

    Only the models the container can run are mounted (read-only), as the non-root user the NGC
    image ships; the shell expands ``$GENDEPLOY_ADMIN_KEY`` (the command refuses to run without
    it)."""
    models = container_models(repo_dir)
    if not models:
        raise ServeError(f"{repo_dir} has no onnxruntime_onnx or tensorrt_plan model to serve")
    why = "chosen with --docker-tag"
    if tag is None:
        tag, why = container_tag(engine_tensorrt_version(repo_dir))
    args = ["docker", "run", "--rm", "--user=triton-server"]
    if gpus:
        args += ["--gpus=all"]
    args += [f"-p127.0.0.1:{port}:{port}" for port in (8000, 8001, 8002)]  # loopback only
    for model in models:
        args += ["-v", f"{(repo_dir / model).resolve()}:/models/{model}:ro"]
    args.append(image(tag))
    # double quotes, not shlex's single ones, for the flags that carry the key: the shell
    # expands it
    server = [f'"{a}"' if KEY_ENV in a else shlex.quote(a) for a in tritonserver_args(SHELL_KEY)]
    return " ".join([shlex.join(args), *server]), why, tag
