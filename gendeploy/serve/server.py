"""Start and stop a real ``tritonserver`` bound to loopback (found by ``serve.tritonserver``).

Every address is 127.0.0.1: HTTP, gRPC and metrics.

    with TritonServer("triton_repo") as server:
        server.http_url, server.grpc_url, server.metrics_url, server.admin_key

The management APIs (model load/unload/index, shared memory, trace, logging) are locked behind
``server.admin_key`` (see ``serve.admin``); health, metadata, configs, inference and statistics are
open. The server runs in its own process group; ``stop()`` sends SIGINT, waits, then kills
whatever is left of the group, so no python-backend stub outlives it, and removes the stubs'
shared-memory regions (named with a per-server prefix, ``serve.shm``) from ``/dev/shm``; each
start also removes what servers killed together with their starters left there. On Linux,
started from the main thread, the server is also sent SIGTERM when the process that started it
dies, even by SIGKILL. ``start()`` after a crash restarts it on the same ports
(``serve.supervisor``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gendeploy.errors import ServeError, UsageError
from gendeploy.manifest import MANIFEST_NAME
from gendeploy.runtime.triton import connect
from gendeploy.serve.admin import admin_headers, check_key, new_key, restricted_args
from gendeploy.serve.pinned import PinnedRepository
from gendeploy.serve.repo import parse_config
from gendeploy.serve.shm import backend_config, new_prefix, remove_regions, remove_stale_regions
from gendeploy.serve.tritonserver import TritonBinary, find_tritonserver

__all__ = ["TritonServer", "find_tritonserver", "free_port", "group_members", "servable_models"]

PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}


STACK_FRAME = re.compile(r"^\s*\d+# ")  # the backtrace tritonserver prints when it aborts


# what tritonserver prints (before or after its usage text) for a flag it cannot take
BAD_FLAG = re.compile(r"Bad option|.*unrecognized option|Invalid option")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_taken(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def listening(port: int) -> bool:
    """Whether 127.0.0.1:``port`` accepts a connection."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def check_repository(repo_dir: Path) -> None:
    """Refuse what is not a model repository, with the command that makes one."""
    if (repo_dir / MANIFEST_NAME).is_file():
        raise UsageError(
            f"{repo_dir} is an export, not a model repository: run `gendeploy repo {repo_dir} "
            f"--repo triton_repo`, then `gendeploy serve triton_repo`"
        )
    if not any(repo_dir.glob("*/config.pbtxt")):
        raise UsageError(
            f"{repo_dir} holds no model (no <model>/config.pbtxt): write one with "
            f"`gendeploy repo EXPORT_DIR --repo {repo_dir}`"
        )


def servable_models(repo_dir: Path, backend_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Models this server can load, and the others with the reason (a backend it lacks)."""
    load: list[str] = []
    skipped: dict[str, str] = {}
    for config_path in sorted(repo_dir.glob("*/config.pbtxt")):
        name = config_path.parent.name
        config = parse_config(config_path.read_text())
        backend = config.backend or PLATFORM_BACKENDS.get(config.platform, config.platform)
        if backend_dir.is_dir() and not (backend_dir / backend).is_dir():
            skipped[name] = (
                f"needs Triton's '{backend}' backend, which this tritonserver lacks; "
                f"the NGC container has it (`gendeploy serve --docker`)"
            )
        else:
            load.append(name)
    return load, skipped


ENGINE_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tensorrt": "TensorRT"}


def served_artifact(repo_dir: Path, model: str, log: str = "") -> str:
    """What ``model`` runs: the export artifact, and the engine gendeploy's python model says in
    the server's ``log`` it loaded (else what its config asks for)."""
    config = parse_config((repo_dir / model / "config.pbtxt").read_text())
    params = {k: v.string_value for k, v in config.parameters.items()}
    artifact = params.get("gendeploy_artifact", "?")
    if config.backend != "python":
        return f"artifact {artifact} ({config.platform or config.backend})"
    ran = re.findall(rf"gendeploy: {re.escape(model)} runs on (\w+)", log)
    if ran:
        return f"artifact {artifact} (runs on {ENGINE_NAMES.get(ran[-1], ran[-1])})"
    wanted = "OpenVINO" if params.get("runtime") == "openvino" else "ONNX Runtime"
    return f"artifact {artifact} ({wanted}; its TensorRT engine on a GPU with TensorRT)"


class StartCancelled(ServeError):
    """``TritonServer.cancel`` was set while the server was starting."""


class TritonServer:
    """A tritonserver process serving ``repo_dir`` on 127.0.0.1 (ports 0 = pick free ones, once:
    a restart keeps them). Management APIs need ``admin_key`` (generated unless given).

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
        admin_key: str | None = None,
        watch: bool = False,
        http: bool = True,
        env: dict[str, str] | None = None,
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
        self.watch = watch
        self.http = http  # False: gRPC only (Triton 2.51's HTTP frontend has crashes)
        self.env = env or {}
        self.admin_key = check_key(admin_key) if admin_key else new_key()
        # python-backend stubs name their /dev/shm regions with this (``serve.shm``): a restart
        # removes the regions a crashed predecessor left, and only those
        self.shm_prefix = new_prefix("server")
        self.process: subprocess.Popen[bytes] | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.starts = 0  # successful starts: 1 + restarts
        self.loaded: list[str] = []
        self.skipped: dict[str, str] = {}  # model -> why this server cannot load it
        self._seen: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._log_offset = 0  # where this run's part of the log starts
        self._pinned: PinnedRepository | None = None  # what is served (``serve.pinned``)
        self.cancel: threading.Event | None = None  # set: a start in progress gives up

    @property
    def http_url(self) -> str:
        if not self.http:
            raise ServeError("this tritonserver serves gRPC only (started without HTTP)")
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def port(self) -> int:
        """The port that names this server (its state and key files): HTTP's, else gRPC's."""
        return self.http_port if self.http else self.grpc_port

    @property
    def protocol(self) -> str:
        """How gendeploy itself talks to it (readiness, the locked APIs)."""
        return "http" if self.http else "grpc"

    @property
    def url(self) -> str:
        """Where gendeploy itself talks to it (``protocol``)."""
        return f"127.0.0.1:{self.port}"

    def ports_by_number(self) -> dict[int, str]:
        """The ports clients send requests to, and their protocol."""
        ports = {self.grpc_port: "grpc"}
        if self.http:
            ports[self.http_port] = "http"
        return ports

    def endpoints(self) -> dict[str, Any]:
        return {
            "http": self.http_url if self.http else None,
            "grpc": self.grpc_url,
            "metrics": self.metrics_url,
            "pid": self.process.pid if self.process else None,
            "log": str(self.log_path),
            "repo": str(self.repo_dir),
        }

    def start(self) -> TritonServer:
        """Start the server and wait until it is ready; after a crash (``reap()``), start it
        again on the same ports, serving what it served (``serve.pinned``)."""
        if self.running():
            return self
        self.reap()  # a dead predecessor: its stubs and shared memory go first
        binary = find_tritonserver(self.tritonserver)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="gendeploy-tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        auto = not any(self.requested) and not self.http_port
        for attempt in range(3 if auto else 1):
            if not self.http_port:  # chosen once: a restarted server keeps its ports
                self.http_port, self.grpc_port, self.metrics_port = (
                    p or free_port() for p in self.requested
                )
            try:
                self._check_ports()
                self._spawn(binary)
                self._wait_ready()
                self.starts += 1
                return self
            except ServeError:
                self.reap()
                in_use = "address already in use" in self._log_tail().lower()
                if not (auto and in_use and attempt < 2):
                    raise
                self.http_port = 0  # another process took a free port meanwhile: pick again
            except BaseException:  # Ctrl-C while starting: leave nothing running
                self.reap()
                raise
        raise AssertionError("unreachable")

    def _check_ports(self) -> None:
        ports = {
            "--http-port": self.http_port,
            "--grpc-port": self.grpc_port,
            "--metrics-port": self.metrics_port,
        }
        if not self.http:
            del ports["--http-port"]
        for flag, port in ports.items():
            if port_taken(port):
                raise ServeError(
                    f"port {port} on 127.0.0.1 is in use (another `gendeploy serve`?): stop "
                    f"that server, or pass {flag} with a free port (0 picks one)"
                )

    def _pin_servable(self, binary: TritonBinary) -> PinnedRepository:
        """At the first start: pin every model this server's backends can run."""
        if self._pinned is not None:
            return self._pinned
        servable, self.skipped = servable_models(self.repo_dir, binary.backend_dir)
        if not servable:
            why = "; ".join(f"{m}: {r}" for m, r in self.skipped.items())
            raise ServeError(f"no model in {self.repo_dir} can be served here ({why})")
        self._seen = _repo_state(self.repo_dir)
        pinned = PinnedRepository(self.repo_dir)
        for model in servable:
            pinned.pin(model)
        self._pinned = pinned
        return pinned

    def _spawn(self, binary: TritonBinary) -> None:
        assert self.log_path is not None
        pinned = self._pin_servable(binary)
        self.loaded = pinned.models()
        remove_regions(self.shm_prefix)
        remove_stale_regions()  # what servers killed with their starters left behind
        cmd = [
            str(binary.executable),
            f"--model-repository={pinned.root}",
            *self._model_control_args(),
            f"--backend-directory={binary.backend_dir}",
            *self._http_args(),
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--metrics-address=127.0.0.1",
            "--allow-gpu-metrics=false",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            "--disable-auto-complete-config",  # configs are complete: nothing may rewrite them
            f"--backend-config={backend_config(self.shm_prefix)}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            *restricted_args(self.admin_key),
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            log.write(f"=== gendeploy: tritonserver start {self.starts + 1} ===\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self.process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **binary.env, **self.env},
                start_new_session=True,  # its own process group: stop() reaps the stubs too
                preexec_fn=_child_setup(),
            )

    def _http_args(self) -> list[str]:
        if not self.http:
            return ["--allow-http=false"]
        return ["--http-address=127.0.0.1", f"--http-port={self.http_port}"]

    def _model_control_args(self) -> list[str]:
        """Without ``watch`` nothing may change what is served: model control "none", so no
        client can load or unload anything, admin key or not. With ``watch``, "explicit" mode:
        loading is allowed, behind the key (``refresh`` pins and loads new versions)."""
        if not self.watch:
            return ["--model-control-mode=none"]
        return ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.loaded)]

    def log_text(self) -> str:
        """Everything this run of the server has logged so far."""
        return self._log_tail(1_000_000)

    def _log_tail(self, lines: int = 15) -> str:
        """The last lines this run of the server wrote to the log."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            text = f.read().decode(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def exit_status(self) -> str:
        """How the server process ended: "killed by SIGABRT", "exit code 1", or "running"."""
        code = self.process.poll() if self.process else None
        if code is None:
            return "running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def crash_cause(self, lines: int = 3) -> str:
        """The last lines the server logged before it ended, without its backtrace."""
        text = [
            " ".join(line.split())
            for line in self._log_tail(200).splitlines()
            if line.strip() and not STACK_FRAME.match(line)
        ]
        return " | ".join(text[-lines:]) or "nothing in its log"

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.cancel is not None and self.cancel.is_set():
                raise StartCancelled("stopped while tritonserver was starting")
            if self.process.poll() is not None:
                # log lines, not its usage text (indented), which it prints after a bad flag
                lines = [line for line in self._log_tail(2000).splitlines() if line[:1].strip()]
                bad = [" ".join(lines[n : n + 2]) for n, x in enumerate(lines) if BAD_FLAG.match(x)]
                errors = (
                    [line for line in lines if "failed to load" in line]
                    or bad
                    or [line for line in lines if line.startswith("error") or "address" in line]
                )
                detail = errors[0].split("] ", 1)[-1].strip('"') if errors else self.exit_status()
                raise ServeError(
                    f"tritonserver exited during startup: {detail} (log: {self.log_path})"
                )
            # Triton opens its metrics port after the HTTP and gRPC endpoints report ready
            if self.is_ready() and listening(self.metrics_port):
                return
            time.sleep(0.25)
        raise ServeError(
            f"tritonserver not ready after {self.startup_timeout_s:.0f}s (log: {self.log_path})"
        )

    def admin_client(self) -> Any:
        """A tritonclient of ``self.protocol``; pass ``headers=self.admin_headers()`` for locked
        APIs."""
        return connect(self.url, self.protocol, timeout_s=300.0)

    def admin_headers(self, protocol: str | None = None) -> dict[str, str]:
        return admin_headers(self.admin_key, protocol or self.protocol)

    def is_ready(self) -> bool:
        try:
            client = connect(self.url, self.protocol, timeout_s=2.0)
        except OSError:
            return False
        try:
            return bool(client.is_server_ready())
        except Exception:  # connection refused or reset: not ready (yet)
            return False
        finally:
            client.close()

    def models(self) -> list[dict[str, Any]]:
        """The repository index: name, version, state of every model (a locked API)."""
        from tritonclient.utils import InferenceServerException

        client = self.admin_client()
        try:
            if not self.http:
                index = client.get_model_repository_index(
                    headers=self.admin_headers(), as_json=True
                )
                return list(index.get("models", []))
            return list(client.get_model_repository_index(headers=self.admin_headers()))
        except InferenceServerException as e:
            raise ServeError(f"tritonserver refused the repository index: {e.message()}") from None
        finally:
            client.close()

    def load(self, model: str) -> None:
        """(Re)load ``model``: the version policy's versions on disk now, new config included.
        Triton swaps versions only once the new ones are ready, so requests keep being served."""
        from tritonclient.utils import InferenceServerException

        client = self.admin_client()
        try:
            client.load_model(model, headers=self.admin_headers())
        except InferenceServerException as e:
            detail = " ".join(str(e.message()).split())
            raise ServeError(f"tritonserver could not load {model!r}: {detail}") from None
        finally:
            client.close()

    def refresh(self) -> list[str]:
        """Load models added to the repo, or given a new version or config, since the last look
        (a server started with ``watch``); returns the models loaded. A version that fails to
        load is reported (``ServeError``, once per change on disk) and never pinned: the one
        before it keeps serving, now and after a restart."""
        if not self.watch or self._pinned is None:
            raise ServeError("this server was started without watch: it cannot load models")
        state = _repo_state(self.repo_dir)
        changed = [m for m in self.loadable() if state.get(m) != self._seen.get(m)]
        self._seen = state
        loaded, failures = [], []
        for model in changed:
            previous = self._pinned.pin(model)
            try:
                self.load(model)
            except ServeError as e:
                self._pinned.restore(model, previous)
                failures.append(str(e))
                continue
            self._pinned.confirm(model)
            loaded.append(model)
            if model not in self.loaded:
                self.loaded.append(model)
        if failures:
            raise ServeError("; ".join(failures) + " (the version before keeps serving)")
        return loaded

    def loadable(self) -> list[str]:
        binary = find_tritonserver(self.tritonserver)
        load, self.skipped = servable_models(self.repo_dir, binary.backend_dir)
        return load

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def reap(self) -> None:
        """Stop the server process, or clean up after one that died: graceful SIGINT, then
        SIGKILL to the whole process group (stubs included), then the stubs' shared-memory
        regions. What it served stays pinned for the next ``start()``."""
        process, self.process = self.process, None
        if process is not None:
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
        remove_regions(self.shm_prefix)

    def stop(self) -> None:
        """``reap()``, and forget what was served: the next ``start()`` pins the repo afresh."""
        self.reap()
        pinned, self._pinned = self._pinned, None
        if pinned is not None:
            pinned.remove()

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


def _child_setup() -> Callable[[], None]:
    """For the child, before exec: files and shared-memory regions it creates are its owner's
    only (umask 077: the python backend's regions carry every request's tensors), and, on Linux
    from the main thread, SIGTERM when its parent dies (PR_SET_PDEATHSIG).

    Linux ties the death signal to the thread that forked, so it is armed only from the main
    thread (a worker thread's exit would stop the server). Everything but the system calls is
    prepared here, in the parent: between fork and exec the child must not take locks (``dlopen``
    would).
    """
    arm_death_signal = (
        sys.platform == "linux" and threading.current_thread() is threading.main_thread()
    )
    prctl = ctypes.CDLL(None, use_errno=True).prctl if arm_death_signal else None
    parent, pr_set_pdeathsig, sigterm = os.getpid(), 1, int(signal.SIGTERM)

    def setup() -> None:
        os.umask(0o077)
        if prctl is None:
            return
        prctl(pr_set_pdeathsig, sigterm)  # a failure only loses this safety net
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return setup


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
