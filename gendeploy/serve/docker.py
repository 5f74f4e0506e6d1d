"""``gendeploy serve --docker``: the NGC Triton container command for GPU hosts.

A TensorRT engine loads only in the TensorRT version it was built with (build number included,
unless built version-compatible), so the tag is chosen from the version recorded in the served
export's manifest, and the printed command comes with a check of the image's own TensorRT.
"""

from __future__ import annotations

import json
import math
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
NGC_PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan")

# Triton's HTTP frontend aborted the whole server on small hostile requests (an input shape of
# 10^12 elements: std::bad_alloc, 317 bytes) until these upstream fixes, checked against
# triton-inference-server/server's release branches (TRITON_VERSION, and each merge commit an
# ancestor of the branch): #8182 element counts (2.58.0, NGC 25.05), #8174 --http-max-input-size
# (2.59.0, 25.06), #8432 the JSON request size (2.62.0, 25.10), #8676 overflows reading JSON
# inputs (2.68.0, 26.04). The pip server here is 2.51.0 (24.10) and has none of them.
HTTP_FIXED_TAG = "26.04"
DEFAULT_TAG = "26.08"  # Triton 2.72.0, the newest release branch checked; has every fix above
HTTP_FIXES = "#8182, #8174, #8432, #8676"
JSON_BYTES_PER_VALUE = 16  # "-1.2345678e-05, ": the JSON text of one FP32 value, at most
TRITON_MAX_INPUT_DEFAULT = 64 * 2**20  # --http-max-input-size's own default


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
        return DEFAULT_TAG, (
            "no TensorRT engine in the repo: the newest tag checked, whose HTTP frontend has the "
            f"fixes for the request crashes of older ones ({HTTP_FIXES})"
        )
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


def http_frontend_fixed(tag: str) -> bool:
    """Whether NGC tag ``tag`` (YY.MM[-suffix]) has every HTTP crash fix above; an unknown form
    counts as not fixed."""
    try:
        year, month = (int(x) for x in tag.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    fixed_year, fixed_month = (int(x) for x in HTTP_FIXED_TAG.split("."))
    return (year, month) >= (fixed_year, fixed_month)


def http_warning(tag: str, flag: str) -> str:
    """What to say about the HTTP frontend of ``tag`` when it lacks the fixes; ``flag`` is the
    option that turns HTTP off."""
    return (
        f"the HTTP frontend of tag {tag} aborts the whole server on some malformed requests "
        f"(fixed in {HTTP_FIXED_TAG}: Triton {HTTP_FIXES}); where untrusted clients can reach it, "
        f"serve gRPC only ({flag})"
    )


def max_input_bytes(repo_dir: Path, models: list[str]) -> int:
    """``--http-max-input-size`` for ``models``: the largest request they take as JSON text at
    their max batch (rounded up to MiB, at least 1 MiB); Triton's 64 MiB default when a
    dimension is dynamic."""
    largest = 0
    for model in models:
        config = parse_config((repo_dir / model / "config.pbtxt").read_text())
        per_sample = 0
        for tensor in config.input:
            if any(d < 0 for d in tensor.dims):
                return TRITON_MAX_INPUT_DEFAULT
            per_sample += math.prod(tensor.dims)
        largest = max(largest, per_sample * max(config.max_batch_size, 1) * JSON_BYTES_PER_VALUE)
    return max(1, math.ceil(largest / 2**20)) * 2**20


def tritonserver_args(
    key_ref: str,
    model_dir: str = "/models",
    models: list[str] | None = None,
    http: bool = True,
    max_input_size: int | None = None,
) -> list[str]:
    """The container's tritonserver command, every management API locked behind the admin key;
    ``key_ref`` is how the key is spelt where the command runs (``SHELL_KEY`` for a shell,
    ``$(GENDEPLOY_ADMIN_KEY)`` in a Kubernetes container).

    Without ``models``, everything under ``model_dir`` is served, fixed at start (model control
    "none": no client can load or unload): right where only the container's models are mounted.
    With ``models``, ``model_dir`` may hold more (a whole repository in an object store, or
    KServe's copy of it): model control "explicit" loads exactly ``models`` at start, and loading
    anything else needs the key (the model-repository API is locked). Without ``http`` the HTTP
    frontend is off (gRPC only); ``max_input_size`` caps what an HTTP request may allocate (a
    flag of Triton >= 2.59, not of the pip server's 2.51)."""
    apis = ",".join(LOCKED_APIS)
    control = ["--model-control-mode=none"]
    if models is not None:
        control = ["--model-control-mode=explicit", *(f"--load-model={m}" for m in models)]
    frontend = [f"--http-restricted-api={apis}:{ADMIN_HEADER}={key_ref}"]
    if not http:
        frontend = ["--allow-http=false"]
    elif max_input_size is not None:
        frontend.append(f"--http-max-input-size={max_input_size}")
    return [
        "tritonserver",
        f"--model-repository={model_dir}",
        *control,
        "--disable-auto-complete-config",
        "--allow-sagemaker=false",
        "--allow-vertex-ai=false",
        *frontend,
        f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={key_ref}",
    ]


def docker_command(
    repo_dir: Path, tag: str | None = None, gpus: bool = True, http: bool = True
) -> tuple[str, str, str]:
    """(command, why the tag, tag) serving ``repo_dir`` on 127.0.0.1 ports 8000/8001/8002 (no
    8000 without ``http``).

    Only the models the container can run are mounted (read-only), as the non-root user the NGC
    image ships; the shell expands ``$GENDEPLOY_ADMIN_KEY`` (the command refuses to run without
    it). A tag with the HTTP fixes gets ``--http-max-input-size`` sized to the models; an older
    one serving HTTP gets a warning in ``why``."""
    models = container_models(repo_dir)
    if not models:
        raise ServeError(f"{repo_dir} has no onnxruntime_onnx or tensorrt_plan model to serve")
    why = "chosen with --docker-tag"
    if tag is None:
        tag, why = container_tag(engine_tensorrt_version(repo_dir))
    fixed = http_frontend_fixed(tag)
    if http and not fixed:
        why += f"; WARNING: {http_warning(tag, '--no-http')}"
    args = ["docker", "run", "--rm", "--user=triton-server"]
    if gpus:
        args += ["--gpus=all"]
    ports = (8000, 8001, 8002) if http else (8001, 8002)
    args += [f"-p127.0.0.1:{port}:{port}" for port in ports]  # loopback only
    for model in models:
        args += ["-v", f"{(repo_dir / model).resolve()}:/models/{model}:ro"]
    args.append(image(tag))
    limit = max_input_bytes(repo_dir, models) if http and fixed else None
    flags = tritonserver_args(SHELL_KEY, http=http, max_input_size=limit)
    # double quotes, not shlex's single ones, for the flags that carry the key: the shell
    # expands it
    server = [f'"{a}"' if KEY_ENV in a else shlex.quote(a) for a in flags]
    return " ".join([shlex.join(args), *server]), why, tag
