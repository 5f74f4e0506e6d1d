"""``gendeploy serve --docker``: the NGC Triton container command for GPU hosts.

A TensorRT engine only loads in a Triton whose TensorRT has the engine's major.minor version, so
the tag is chosen from the TensorRT version recorded in the served export's manifest.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

# TensorRT major.minor -> first NGC tritonserver container shipping it (NGC release notes).
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
    """(tag, why) for the engine's TensorRT version."""
    if trt_version is None:
        return DEFAULT_TAG, "no TensorRT engine in the repo: any recent tag serves the ONNX models"
    major_minor = ".".join(trt_version.split(".")[:2])
    tag = TRT_TO_CONTAINER.get(major_minor)
    if tag is None:
        return DEFAULT_TAG, (
            f"no known container for TensorRT {trt_version}: pick the tag with TensorRT "
            f"{major_minor} in NGC's Triton release notes"
        )
    return tag, f"its TensorRT {major_minor} matches the engine (built with {trt_version})"


def docker_command(repo_dir: Path, tag: str | None = None, gpus: bool = True) -> tuple[str, str]:
    """(command, why the tag) serving ``repo_dir`` on ports 8000/8001/8002."""
    why = "chosen with --docker-tag"
    if tag is None:
        tag, why = container_tag(engine_tensorrt_version(repo_dir))
    args = ["docker", "run", "--rm"]
    if gpus:
        args += ["--gpus=all"]
    args += [
        "-p8000:8000",
        "-p8001:8001",
        "-p8002:8002",
        "-v",
        f"{repo_dir.resolve()}:/models",
        f"nvcr.io/nvidia/tritonserver:{tag}-py3",
        "tritonserver",
        "--model-repository=/models",
    ]
    return shlex.join(args), why
