"""Atomic file writes (every artifact gendeploy writes appears whole or not at all) and the one
user cache directory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def cache_dir() -> Path:
    """``$GENDEPLOY_CACHE_DIR``, else ``$XDG_CACHE_HOME/gendeploy``, else ``~/.cache/gendeploy``:
    the digits classifier, TensorRT timing caches, tritonserver backends, perf_analyzer."""
    explicit = os.environ.get("GENDEPLOY_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gendeploy"


def atomic_write(path: Path, write: Callable[[BinaryIO], object], mode: int | None = None) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place.
    The file gets ``mode``, else the usual 0666 less the umask; a private ``mode`` (0600) is
    never wider, not even while the file is empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (0o666 & ~umask) if mode is None else mode)  # mkstemp made it 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data))
