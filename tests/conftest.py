"""Shared fixtures: tiny model configs and checkpoints written without training."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from gendeploy.trainer.checkpoint import Checkpoint, save_checkpoint
from gendeploy.trainer.config import Arch, ModelConfig
from gendeploy.trainer.models import build_generator, init_weights

# Small enough that an export + gate takes about two seconds on one core.
TINY_CONDITIONAL_DCGAN = ModelConfig(
    arch=Arch.dcgan,
    latent_dim=16,
    image_channels=1,
    image_size=32,
    num_classes=4,
    width=8,
    embed_dim=8,
)
TINY_MLP = ModelConfig(arch=Arch.mlp, latent_dim=8, image_channels=1, image_size=8, width=4)

MakeCheckpoint = Callable[..., Path]


def write_checkpoint(config: ModelConfig, path: Path, seed: int = 0) -> Path:
    """A loadable gendeploy checkpoint with DCGAN-initialised weights (no training)."""
    torch.manual_seed(seed)
    generator = build_generator(config)
    generator.apply(init_weights)
    save_checkpoint(Checkpoint(config, step=0, generator=generator.state_dict()), path)
    return path


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> MakeCheckpoint:
    """``make_checkpoint(config, run="tiny", seed=0)`` -> ``tmp_path/runs/<run>/checkpoint.pt``."""

    def make(
        config: ModelConfig = TINY_CONDITIONAL_DCGAN, run: str = "tiny", seed: int = 0
    ) -> Path:
        return write_checkpoint(config, tmp_path / "runs" / run / "checkpoint.pt", seed)

    return make


def _descendants(root: int) -> dict[int, str]:
    """Live (not zombie) processes under ``root``, by pid, with their command lines."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid in parents.get(todo.pop(), []):
            with contextlib.suppress(OSError):
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            todo.append(pid)
    return found


def _strays() -> dict[int, str]:
    # Python's own multiprocessing helpers (the resource tracker, a forkserver) live as long
    # as the interpreter that started them, by design
    return {
        pid: cmd
        for pid, cmd in _descendants(os.getpid()).items()
        if "from multiprocessing." not in cmd
    }


@pytest.fixture(autouse=True, scope="module")
def no_stray_processes() -> Iterator[None]:
    """Every server, stub and client a test module starts is stopped by its end: a stray one
    would eat the CPU that later modules measure with (and is a leak the product must not
    have). Stragglers get a few seconds, then are killed and reported as an error."""
    yield
    deadline = time.monotonic() + 10
    while (left := _strays()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running by this module: {left}"


STUB = "triton_python_backend_stub"


def stub_regions(root: int) -> dict[int, str]:
    """The python-backend stubs under ``root``: pid -> the shared-memory region it was given
    (a stub's second argument names its ``/dev/shm`` region)."""
    found = {}
    for pid in _descendants(root):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode()).name == STUB and len(argv) > 2:
                found[pid] = argv[2].decode()
    return found


@pytest.fixture(autouse=True, scope="session")
def temporary_files_under_pytests_own_directory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """What the suite's processes write to the temporary directory (the tritonserver log a
    server started without ``--log-file`` gets, tools' scratch files) goes under pytest's own
    base directory, which pytest prunes to its last three runs, not into /tmp for good."""
    scratch = tmp_path_factory.mktemp("tmpdir")  # fixes pytest's base directory first
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = None  # read $TMPDIR again
    yield
    if before is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before
    tempfile.tempdir = None


@pytest.fixture(autouse=True, scope="session")
def no_shared_memory_left() -> Iterator[None]:
    """Every tritonserver the tests start, directly or through gendeploy (serve, bench, soak,
    tune's Model Analyzer), names its stubs' regions with gendeploy's own prefix and leaves none
    in /dev/shm once stopped. The stubs are watched while they run; their regions are checked at
    the end of the session."""
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            seen.update(stub_regions(os.getpid()).values())

    thread = threading.Thread(target=watch, name="stub-region-watch", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()
    foreign = sorted(r for r in seen if not r.startswith("gendeploy_"))
    deadline = time.monotonic() + 10
    while (left := sorted(r for r in seen if Path("/dev/shm", r).exists())) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert not foreign, f"tritonservers started without gendeploy's shm prefix: {foreign}"
    assert not left, f"shared-memory regions left in /dev/shm: {left}"
