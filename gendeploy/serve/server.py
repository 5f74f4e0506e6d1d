"""Start and stop a real ``tritonserver`` bound to loopback (found by ``serve.tritonserver``).

Every address is 127.0.0.1: HTTP, gRPC and metrics.

    with TritonServer("triton_repo") as server:
        server.http_url, server.grpc_url, server.metrics_url

The server runs in its own process group; ``stop()`` sends SIGINT, waits, then kills whatever is
left of the group, so no python-backend stub outlives it. On Linux, started from the main thread,
the server is also sent SIGTERM when the process that started it dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gendeploy.errors import ServeError
from gendeploy.serve.tritonserver import TritonBinary, find_tritonserver

__all__ = ["TritonServer", "find_tritonserver", "free_port", "group_members", "servable_models"]

PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def servable_models(repo_dir: Path, backend_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Models this server can load, and the others with the reason (a backend it lacks)."""
    from gendeploy.serve.repo import parse_config

    load: list[str] = []
    skipped: dict[str, str] = {}
    for config_path in sorted(repo_dir.glob("*/config.pbtxt")):
        name = config_path.parent.name
        config = parse_config(config_path.read_text())
        backend = config.backend or PLATFORM_BACKENDS.get(config.platform, config.platform)
        if backend_dir.is_dir() and not (backend_dir / backend).is_dir():
            skipped[name] = f"this tritonserver has no '{backend}' backend (the NGC container has)"
        else:
            load.append(name)
    return load, skipped


class TritonServer:
    """A tritonserver process serving ``repo_dir`` on 127.0.0.1 (ports 0 = pick free ones).

    Started from the main thread on Linux, the server is stopped (SIGTERM) by the kernel if this
    process dies without calling ``stop()``.
    """

    def __init__(
        self,
        repo_dir: Path | str,
        *,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        tritonserver: Path | str | None = None,
        log_path: Path | str | None = None,
        exit_timeout_s: int = 5,
        startup_timeout_s: float = 180.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.repo_dir = Path(repo_dir).resolve()
        if not self.repo_dir.is_dir():
            raise ServeError(
                f"model repository {self.repo_dir} does not exist; run `gendeploy repo`"
            )
        self.requested = (http_port, grpc_port, metrics_port)
        self.tritonserver = tritonserver
        self.log_path = Path(log_path) if log_path else None
        self.exit_timeout_s = exit_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.loaded: list[str] = []
        self.skipped: dict[str, str] = {}  # model -> why this server cannot load it
        self._seen: dict[str, tuple[int, tuple[str, ...]]] = {}

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def endpoints(self) -> dict[str, Any]:
        return {
            "http": self.http_url,
            "grpc": self.grpc_url,
            "metrics": self.metrics_url,
            "pid": self.process.pid if self.process else None,
            "log": str(self.log_path),
            "repo": str(self.repo_dir),
        }

    def start(self) -> TritonServer:
        binary = find_tritonserver(self.tritonserver)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="gendeploy-tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        auto = not any(self.requested)
        for attempt in range(3 if auto else 1):
            self.http_port, self.grpc_port, self.metrics_port = (
                p or free_port() for p in self.requested
            )
            try:
                self._spawn(binary)
                self._wait_ready()
                return self
            except ServeError:
                self.stop()
                in_use = "address already in use" in self._log_tail().lower()
                if not (auto and in_use and attempt < 2):
                    raise
            except BaseException:  # Ctrl-C while starting: leave nothing running
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _spawn(self, binary: TritonBinary) -> None:
        assert self.log_path is not None
        self.loaded, self.skipped = servable_models(self.repo_dir, binary.backend_dir)
        self._seen = _repo_state(self.repo_dir)
        if not self.loaded:
            raise ServeError(f"no model in {self.repo_dir} can be served by this tritonserver")
        # explicit mode: load only what this server's backends can run, not the NGC-only models
        load = ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.loaded)]
        cmd = [
            str(binary.executable),
            f"--model-repository={self.repo_dir}",
            f"--backend-directory={binary.backend_dir}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--metrics-address=127.0.0.1",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            *load,
            *self.extra_args,
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **binary.env},
                start_new_session=True,  # its own process group: stop() reaps the stubs too
                preexec_fn=_terminate_with_parent(),
            )

    def _log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                lines = self._log_tail(80).splitlines()
                errors = [line for line in lines if "failed to load" in line] or [
                    line for line in lines if line.startswith("error") or "address" in line
                ]
                detail = (
                    errors[0].split("] ", 1)[-1].strip('"')
                    if errors
                    else f"exit code {self.process.returncode}"
                )
                raise ServeError(
                    f"tritonserver exited during startup: {detail} (log: {self.log_path})"
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        raise ServeError(
            f"tritonserver not ready after {self.startup_timeout_s:.0f}s (log: {self.log_path})"
        )

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def models(self) -> list[dict[str, Any]]:
        """The repository index: name, version, state of every model."""
        req = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return list(json.loads(r.read()))

    def load(self, model: str) -> None:
        """(Re)load ``model``: the version policy's versions on disk now, new config included.
        Triton swaps versions only once the new ones are ready, so requests keep being served."""
        url = f"http://{self.http_url}/v2/repository/models/{model}/load"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=300):
                pass
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace").strip()
            raise ServeError(f"tritonserver could not load {model!r}: {detail}") from None

    def refresh(self) -> list[str]:
        """Load models added to the repo, or given a new version or config, since the last look."""
        state = _repo_state(self.repo_dir)
        changed = [m for m in self.loadable() if state.get(m) != self._seen.get(m)]
        for model in changed:
            self.load(model)
            if model not in self.loaded:
                self.loaded.append(model)
        self._seen = state
        return changed

    def loadable(self) -> list[str]:
        binary = find_tritonserver(self.tritonserver)
        load, self.skipped = servable_models(self.repo_dir, binary.backend_dir)
        return load

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Graceful SIGINT, then SIGKILL to the whole process group (stubs included)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=self.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        _kill_group(process.pid)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _repo_state(repo_dir: Path) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Per model: config.pbtxt's mtime and its version directories (config is written last)."""
    state = {}
    for config in repo_dir.glob("*/config.pbtxt"):
        versions = tuple(sorted(p.name for p in config.parent.iterdir() if p.name.isdigit()))
        state[config.parent.name] = (config.stat().st_mtime_ns, versions)
    return state


def _terminate_with_parent() -> Callable[[], None] | None:
    """For the child, before exec: ask Linux for SIGTERM when its parent dies (PR_SET_PDEATHSIG).

    Linux ties this to the thread that forked, so it is armed only from the main thread (a worker
    thread's exit would stop the server). Everything but the system call is prepared here, in
    the parent: between fork and exec the child must not take locks (``dlopen`` would).
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent, pr_set_pdeathsig, sigterm = os.getpid(), 1, int(signal.SIGTERM)

    def arm() -> None:
        prctl(pr_set_pdeathsig, sigterm)  # a failure only loses this safety net
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return arm


def _kill_group(pgid: int) -> None:
    """Kill what is left of the server's process group (an orphaned stub)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """PIDs still in process group ``pgid`` (used by tests to prove no stub is left behind)."""
    import psutil

    members = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.info["pid"]) == pgid:
                members.append(proc.info["pid"])
    return members
