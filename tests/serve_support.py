"""Export directories for the serving tests: a tiny generator's checkpoint exported by the real
exporter (``gendeploy.export.api.export``, fp32 + uint8 artifacts), and its eager images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

# The tiny models and the checkpoint writer are conftest's (pytest puts tests/ on sys.path).
from conftest import TINY_CONDITIONAL_DCGAN as TINY_CONDITIONAL  # noqa: F401
from conftest import TINY_MLP as TINY_UNCONDITIONAL  # noqa: F401
from conftest import write_checkpoint as make_checkpoint  # noqa: F401

from gendeploy.errors import MissingDependencyError
from gendeploy.export.api import ExportOptions, ModelSpec, OutputKind, export
from gendeploy.trainer.checkpoint import load_generator

# `gendeploy serve` defaults to Triton's ports 8000-8002; tests take free ones
FREE_PORTS = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]


def require_tritonserver() -> None:
    """Skip the calling test (or fixture) where no tritonserver can be found."""
    from gendeploy.serve.server import find_tritonserver

    try:
        find_tritonserver()
    except MissingDependencyError as e:
        pytest.skip(f"no tritonserver here: {e}")


def build_export(checkpoint: Path, out_dir: Path, name: str, max_batch: int = 8) -> Path:
    """An export dir with gated fp32 and uint8 ONNX artifacts and its manifest."""
    options = ExportOptions(output=OutputKind.uint8, max_batch=max_batch)
    export(ModelSpec(checkpoint=checkpoint), options, name=name, out=out_dir)
    return out_dir


def eager_images(checkpoint: Path, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    generator, _ = load_generator(checkpoint)
    with torch.no_grad():
        args = [torch.from_numpy(z)]
        if labels is not None:
            args.append(torch.from_numpy(labels.astype(np.int64)))
        return np.asarray(generator(*args).numpy())
