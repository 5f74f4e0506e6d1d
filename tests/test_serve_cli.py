"""`gendeploy serve` and `gendeploy generate` as a new user runs them: the two meet without
flags (generate finds the running server through its state file), a wrong model name lists the
served ones, an export directory or a taken port gets advice that names the fix."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from serve_support import (
    TINY_CONDITIONAL,
    build_export,
    make_checkpoint,
    require_tritonserver,
    serving,
)

from gendeploy.serve.readyfile import ServeState

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model repository, checkpoint) of a tiny conditional generator."""
    require_tritonserver()
    root = tmp_path_factory.mktemp("cli")
    checkpoint = make_checkpoint(TINY_CONDITIONAL, root / "cond.pt")
    export_dir = build_export(checkpoint, root / "export", "tinyc")
    repo = root / "repo"
    done = gendeploy("repo", str(export_dir), "--repo", str(repo))
    assert done.returncode == 0, done.stderr
    return repo, checkpoint


def gendeploy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gendeploy", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_generate_finds_the_running_server_without_any_flag(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")}  # this test's servers only
    with serving(exported, tmp_path, env=env) as serve:
        state: ServeState = serve.state()
        out = tmp_path / "grid.png"
        done = gendeploy("generate", "--num-images", "4", "-o", str(out), env=env)
        assert done.returncode == 0, done.stderr
        assert f"from tinyc (http {state.http})" in done.stdout
        with Image.open(out) as png:
            assert png.format == "PNG"
        wrong = gendeploy("generate", "--model", "nope", "-o", str(out), env=env)
        assert wrong.returncode != 0
        assert wrong.stderr.strip() == (
            f"error: model 'nope' is not served at {state.http}; it has ['tinyc', 'tinyc_uint8']"
        )


def test_serving_an_export_directory_points_to_gendeploy_repo(
    exported: tuple[Path, Path],
) -> None:
    export_dir = exported[0].parent / "export"
    done = gendeploy("serve", str(export_dir), "--http-port", "0")
    assert done.returncode != 0
    assert done.stderr.strip().startswith(f"error: {export_dir} is an export, not a model repo")
    assert f"gendeploy repo {export_dir} --repo triton_repo" in done.stderr


def test_a_taken_port_is_a_one_line_error_that_names_the_fix(exported: tuple[Path, Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = gendeploy(
            "serve",
            str(exported[0]),
            "--http-port",
            str(port),
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (
        f"error: port {port} on 127.0.0.1 is in use (another `gendeploy serve`?): stop that "
        "server, or pass --http-port with a free port (0 picks one)"
    )
