"""The admin key that locks a served tritonserver's management APIs.

Triton's ``--http-restricted-api`` and ``--grpc-restricted-protocol`` put API groups behind a
required header. gendeploy locks every group that changes what the server runs or how it behaves
(``LOCKED_APIS``): loading, unloading and listing models, shared-memory registration, trace and
log settings. Health, metadata, model configs, inference and statistics stay open.

The key is generated per server (or given by the user) and kept in a file only its owner can read
(0600), in :func:`runtime_dir` by default; gendeploy's own operations (``serve --watch``, tests,
bench) send it. See docs/security.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path

from gendeploy.errors import ServeError, UsageError
from gendeploy.fileio import atomic_write, cache_dir

ADMIN_HEADER = "gendeploy-admin-key"
GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"  # Triton prefixes gRPC restriction keys
LOCKED_APIS = ("model-repository", "shared-memory", "trace", "logging")
KEY_ENV = "GENDEPLOY_ADMIN_KEY"  # the container command reads the key from here
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,256}")  # no ',', ':' or '=' (Triton's flag syntax)


def new_key() -> str:
    return secrets.token_urlsafe(32)


def check_key(key: str) -> str:
    if not _KEY_PATTERN.fullmatch(key):
        raise UsageError(
            "the admin key must be 16-256 characters of letters, digits, '_' or '-'; "
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return key


def restricted_args(key: str) -> list[str]:
    """tritonserver flags that require ``key`` for every API group in ``LOCKED_APIS``."""
    apis = ",".join(LOCKED_APIS)
    check_key(key)
    return [
        f"--http-restricted-api={apis}:{ADMIN_HEADER}={key}",
        f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={key}",
    ]


def admin_headers(key: str, protocol: str = "http") -> dict[str, str]:
    """The request header that unlocks ``LOCKED_APIS`` over ``protocol``."""
    return {GRPC_HEADER if protocol == "grpc" else ADMIN_HEADER: key}


def runtime_dir() -> Path:
    """Per-user directory for keys, server state and what servers serve:
    ``$XDG_RUNTIME_DIR/gendeploy``, else the cache's ``run/``. Made private (0700); refused when
    it is a symbolic link or belongs to another user (an inherited ``XDG_RUNTIME_DIR`` under
    ``sudo -E`` must not make gendeploy write keys where someone else can read them)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "gendeploy" if base else cache_dir() / "run"
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise ServeError(
            f"runtime directory {path} is not a plain directory ({e.strerror}): remove it, or "
            "set XDG_RUNTIME_DIR to a directory of yours"
        ) from None
    try:
        owner = os.fstat(fd).st_uid
        if owner != os.geteuid():
            raise ServeError(
                f"runtime directory {path} belongs to user {owner}, not to you: set "
                "XDG_RUNTIME_DIR to a directory of yours"
            )
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def write_key_file(path: Path, key: str) -> Path:
    """Write ``key`` to ``path`` readable by its owner only (0600), atomically."""
    check_key(key)

    atomic_write(path, lambda f: f.write(key.encode() + b"\n"), mode=0o600)
    return path


def read_key_file(path: Path) -> str:
    """The key in ``path``; refused when other users could read it (as ssh refuses such keys)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as e:
        raise ServeError(f"cannot read the admin key file {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ServeError(f"admin key file {path} is readable by other users; chmod 600 {path}")
    return check_key(text)
