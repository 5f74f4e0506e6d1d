"""Export directories for the serving tests: a tiny generator's checkpoint exported by the real
exporter (``gendeploy.export.api.export``, fp32 + uint8 artifacts), and its eager images."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

# The tiny models and the checkpoint writer are conftest's (pytest puts tests/ on sys.path).
from conftest import TINY_CONDITIONAL_DCGAN as TINY_CONDITIONAL  # noqa: F401
from conftest import TINY_MLP as TINY_UNCONDITIONAL  # noqa: F401
from conftest import write_checkpoint as make_checkpoint  # noqa: F401

from gendeploy.errors import MissingDependencyError
from gendeploy.export.api import export
from gendeploy.export.options import ExportOptions, ModelSpec
from gendeploy.manifest import OutputKind
from gendeploy.serve.readyfile import ServeState
from gendeploy.trainer.checkpoint import load_generator

# `gendeploy serve` defaults to Triton's ports 8000-8002; tests take free ones
FREE_PORTS = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]


@dataclass
class Serving:
    process: subprocess.Popen[str]
    ready: Path
    stderr: Path
    checkpoint: Path

    def state(self) -> ServeState:
        return ServeState.from_json(self.ready.read_text())


@contextlib.contextmanager
def serving(
    repo: tuple[Path, Path], tmp_path: Path, *flags: str, env: dict[str, str] | None = None
) -> Iterator[Serving]:
    """`gendeploy serve` in a subprocess; always stopped, server and stubs included."""
    ready, stderr = tmp_path / "ready.json", tmp_path / "serve.err"
    cmd = [sys.executable, "-m", "gendeploy", "serve", str(repo[0]), "--ready-file", str(ready)]
    cmd += [*FREE_PORTS, *flags]
    with stderr.open("w") as err:
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
    serving = Serving(process, ready, stderr, repo[1])
    try:
        deadline = time.monotonic() + 120
        while not ready.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.is_file(), stderr.read_text()
        yield serving
    finally:
        pid = json.loads(ready.read_text()).get("pid") if ready.is_file() else None
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            process.kill()
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


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
