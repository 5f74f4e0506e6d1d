"""The python backend's shared-memory regions in ``/dev/shm``: named per server, removed after it.

Each python-backend model instance talks to its stub through a region in ``/dev/shm`` (1 MiB at
first, growing), named ``<prefix><uuid>``. Triton's default prefix,
``triton_python_backend_shm_region_``, says nothing about who made a region; every tritonserver
gendeploy starts (serve, bench, soak, tune through Model Analyzer, and the tests) passes its own,
``gendeploy_<role>_<pid>_<token>_`` (:func:`new_prefix`, :func:`backend_config`), where ``pid`` is
the gendeploy process that started it. Triton removes its regions when it stops gracefully, and
the starter removes what is left once the server is gone (:func:`remove_regions`). Where neither
could run (the starter and its server both killed), the next start removes the regions whose
starter is dead and that no process maps (:func:`remove_stale_regions`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

SHM_DIR = Path("/dev/shm")
TRITON_DEFAULT_PREFIX = "triton_python_backend_shm_region_"
PREFIX = re.compile(r"gendeploy_(?:[a-z0-9]+_)?(\d+)_[0-9a-f]{8}_")


def new_prefix(role: str) -> str:
    """A prefix no other server has: ``gendeploy_<role>_<this pid>_<random>_``."""
    if not re.fullmatch(r"[a-z0-9]+", role):
        raise ValueError(f"role {role!r} must be lowercase letters and digits")
    return f"gendeploy_{role}_{os.getpid()}_{secrets.token_hex(4)}_"


def backend_config(prefix: str) -> str:
    """The value of tritonserver's ``--backend-config`` that names the regions with ``prefix``."""
    return f"python,shm-region-prefix-name={prefix}"


def regions(prefix: str) -> list[Path]:
    return sorted(SHM_DIR.glob(f"{prefix}*")) if SHM_DIR.is_dir() else []


def remove_regions(prefix: str) -> list[Path]:
    """Delete the regions named with ``prefix`` (a server that is gone: its own, and only those)."""
    removed = []
    for region in regions(prefix):
        with contextlib.suppress(FileNotFoundError):
            region.unlink()
            removed.append(region)
    return removed


def mapped_regions(proc: Path = Path("/proc")) -> set[str]:
    """Names of the ``/dev/shm`` files some process maps (of the processes we may read)."""
    names: set[str] = set()
    marker = f" {SHM_DIR}/"
    for maps in proc.glob("[0-9]*/maps"):
        try:
            text = maps.read_text(errors="replace")
        except OSError:  # gone, or another user's
            continue
        for line in text.splitlines():
            at = line.find(marker)
            if at >= 0:
                names.add(line[at + len(marker) :].split(" (deleted)")[0])
    return names


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_regions() -> list[Path]:
    """Delete gendeploy's regions whose starter is dead and that no process maps: left by a
    server and its starter killed together (SIGKILL to both, an OOM kill, a power cut of the
    container). Another user's regions are left alone (``/dev/shm`` is sticky anyway)."""
    uid = os.getuid()
    stale = []
    for region in SHM_DIR.glob("gendeploy_*") if SHM_DIR.is_dir() else []:
        match = PREFIX.match(region.name)
        with contextlib.suppress(FileNotFoundError):
            if match and region.stat().st_uid == uid and not _alive(int(match.group(1))):
                stale.append(region)
    if not stale:
        return []
    in_use = mapped_regions()
    removed = []
    for region in stale:
        if region.name not in in_use:
            with contextlib.suppress(FileNotFoundError):
                region.unlink()
                removed.append(region)
    return removed
