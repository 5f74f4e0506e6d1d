"""What `gendeploy serve` tells its clients: a JSON state file, kept true while it runs.

Every `gendeploy serve` writes ``serve-<http port>.json`` in the per-user runtime directory (and
at ``--ready-file`` when asked): its endpoints, the models it serves, where its admin key is,
whether tritonserver is ``serving`` or ``restarting`` after a crash, since when, and how many
times it restarted. It is removed when serve stops. `gendeploy generate` finds a running server
here when it is given no ``--url``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gendeploy.errors import ServeError, UsageError
from gendeploy.fileio import atomic_write
from gendeploy.serve.admin import runtime_dir

SCHEMA_VERSION = 1
DEFAULT_PORTS = (8000, 8001, 8002)  # Triton's own (HTTP, gRPC, metrics): the container's too


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ServeState:
    http: str | None  # None: served over gRPC only (`gendeploy serve --no-http`)
    grpc: str
    metrics: str
    log: str
    repo: str
    admin_key_file: str
    serve_pid: int  # the `gendeploy serve` process
    pid: int | None = None  # the current tritonserver (its process group)
    models: list[str] = field(default_factory=list)
    not_loaded: dict[str, str] = field(default_factory=dict)
    state: str = "serving"  # or "restarting": tritonserver died and is being started again
    since: str = ""  # when the current state began
    started: str = ""  # when serve first became ready
    restarts: int = 0
    last_crash: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    def url(self, protocol: str) -> str:
        if protocol == "grpc":
            return self.grpc
        if self.http is None:
            raise UsageError(f"the server at {self.grpc} serves gRPC only: pass --protocol grpc")
        return self.http

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ServeState:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"not a schema {SCHEMA_VERSION} serve state")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def state_path(port: int) -> Path:
    """The well-known state file of the server whose HTTP port (gRPC's without HTTP) is
    ``port``."""
    return runtime_dir() / f"serve-{port}.json"


def write_state(state: ServeState, paths: list[Path]) -> None:
    text = state.to_json().encode()
    for path in paths:
        atomic_write(path, lambda f: f.write(text))


def read_state(path: Path, wait_s: float = 0.0) -> ServeState:
    """The state in ``path``, waiting up to ``wait_s`` seconds for a starting server to write it."""
    deadline = time.monotonic() + wait_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.25)
    if not path.exists():
        raise ServeError(f"no ready file {path} after {wait_s:.0f}s: is `gendeploy serve` running?")
    try:
        return ServeState.from_json(path.read_text())
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"{path} is not a `gendeploy serve --ready-file` file ({e})") from None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_servers() -> list[ServeState]:
    """The `gendeploy serve` processes of this user that are running now (stale files skipped)."""
    found = []
    for path in sorted(runtime_dir().glob("serve-*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            state = ServeState.from_json(path.read_text())
            if pid_alive(state.serve_pid):
                found.append(state)
    return found
