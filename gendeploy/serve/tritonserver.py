"""Find a ``tritonserver`` and prepare the one in the ``nvidia-pytriton`` wheel to run.

A ``tritonserver`` on ``PATH`` is used as is. Otherwise the one in the ``nvidia-pytriton`` wheel is
prepared (see ../shared/TRITON_ON_CPU.md): a backend directory in the user cache holds links to the
wheel's python backend plus a copy of the stub for this Python; the stub finds this environment from
the first ``python3`` on ``PATH`` and this interpreter's ``libpython`` through ``LD_LIBRARY_PATH``.
``gendeploy doctor`` uses the read-only ``locate_tritonserver``; the server ``find_tritonserver``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from gendeploy.errors import MissingDependencyError, ServeError
from gendeploy.fileio import cache_dir

STUB = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonBinary:
    executable: Path
    backend_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # set on top of os.environ
    origin: str = "PATH"  # "PATH", "nvidia-pytriton" or "explicit"


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def _prepare_pytriton_backends(root: Path) -> Path:
    """A backend dir: the wheel's python backend plus this Python's stub (made once)."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / py / STUB
    if not stub.is_file():
        raise MissingDependencyError(f"nvidia-pytriton has no python backend stub for Python {py}")
    source = root / "backends" / "python"
    stat = stub.stat()
    key = hashlib.sha256(f"{root}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / f"tritonserver-py{py}-{key}" / "backends"
    if (target / "python" / STUB).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=target.parent))
    try:
        (staging / "python").mkdir()
        for item in source.iterdir():
            if item.is_file():
                (staging / "python" / item.name).symlink_to(item)
        shutil.copy2(stub, staging / "python" / STUB)
        with contextlib.suppress(OSError):  # another process won the race: use its copy
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _pytriton_env(root: Path) -> dict[str, str]:
    libs = [root.parent.parent / "nvidia_pytriton.libs"]
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlib and (Path(libdir) / str(ldlib)).exists():
        libs.insert(0, Path(libdir))  # the stub then links this interpreter's own libpython
    old_ld = os.environ.get("LD_LIBRARY_PATH", "")
    bin_dir = Path(sys.prefix) / "bin"
    return {
        "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
        "LD_LIBRARY_PATH": os.pathsep.join([str(p) for p in libs] + ([old_ld] if old_ld else [])),
    }


def locate_tritonserver(explicit: Path | str | None = None) -> TritonBinary:
    """Where ``tritonserver`` is, read-only: ``explicit``, else on PATH, else nvidia-pytriton's
    (with the wheel's own backend directory, not yet prepared to run)."""
    if explicit is not None:
        exe = Path(explicit)
        if not exe.is_file():
            raise ServeError(f"tritonserver not found at {exe}")
        return TritonBinary(exe, exe.parent.parent / "backends", origin="explicit")
    on_path = shutil.which("tritonserver")
    if on_path:
        exe = Path(on_path).resolve()
        backends = exe.parent.parent / "backends"
        if not backends.is_dir():
            backends = Path("/opt/tritonserver/backends")
        return TritonBinary(exe, backends, origin="PATH")
    root = _pytriton_root()
    if root is None:
        raise MissingDependencyError(
            "no tritonserver on PATH and nvidia-pytriton is not installed; "
            "pip install 'gendeploy[cpu]' or use the NGC container (`gendeploy serve --docker`)"
        )
    return TritonBinary(root / "bin" / "tritonserver", root / "backends", origin="nvidia-pytriton")


def find_tritonserver(explicit: Path | str | None = None) -> TritonBinary:
    """The ``tritonserver`` to run (see ``locate_tritonserver``); nvidia-pytriton's is prepared:
    a backend directory with this Python's stub and the environment the stub needs."""
    binary = locate_tritonserver(explicit)
    if binary.origin != "nvidia-pytriton":
        return binary
    root = binary.backend_dir.parent
    return TritonBinary(
        binary.executable,
        _prepare_pytriton_backends(root),
        _pytriton_env(root),
        origin="nvidia-pytriton",
    )


def backend_names(binary: TritonBinary) -> list[str]:
    """The backends this tritonserver has (directories of its backend directory)."""
    if not binary.backend_dir.is_dir():
        return []
    return sorted(p.name for p in binary.backend_dir.iterdir() if p.is_dir())
