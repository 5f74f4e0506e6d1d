"""`gendeploy serve`: a supervised, locked tritonserver and the state file that describes it.

    serve(Path("triton_repo"), ServeOptions(), stop=threading.Event())

runs until ``stop`` is set: starts the server, writes the state file (``serve.readyfile``),
restarts the server when it dies (``serve.supervisor``), loads new versions with ``watch``, and
on the way out stops the server and removes the state file and a generated admin key.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from gendeploy import cpus
from gendeploy.errors import ServeError, UsageError
from gendeploy.serve.admin import (
    ADMIN_HEADER,
    LOCKED_APIS,
    new_key,
    proc_hides_commands,
    read_key_file,
    runtime_dir,
    write_key_file,
)
from gendeploy.serve.readyfile import DEFAULT_PORTS, ServeState, now_iso, state_path, write_state
from gendeploy.serve.server import StartCancelled, TritonServer, check_repository, served_artifact
from gendeploy.serve.supervisor import RestartPolicy, Supervisor

THREADS_ENV = cpus.ENV  # the python model's engine threads where its config sets none


@dataclass(frozen=True)
class ServeOptions:
    http_port: int = DEFAULT_PORTS[0]  # 0: a free one
    grpc_port: int = DEFAULT_PORTS[1]
    metrics_port: int = DEFAULT_PORTS[2]
    tritonserver: Path | None = None
    log_file: Path | None = None
    ready_file: Path | None = None
    admin_key_file: Path | None = None  # default: a new key in the runtime dir, removed at stop
    watch: bool = False
    http: bool = True  # False: gRPC only, for networks where the HTTP frontend's crashes matter
    threads: int | None = None  # engine threads per model instance (None: the CPUs we have)
    policy: RestartPolicy = field(default_factory=RestartPolicy)

    def __post_init__(self) -> None:
        for port in (self.http_port, self.grpc_port, self.metrics_port):
            if not 0 <= port <= 65535:
                raise UsageError(f"ports must be in [0, 65535] (0: a free one), got {port}")


def _admin_key(options: ServeOptions) -> tuple[str, Path | None]:
    """(key, the file to write it to once the port is known: None when the user's file has it)."""
    path = options.admin_key_file
    if path is not None and path.exists():
        return read_key_file(path), None
    return new_key(), path


def serve(
    repo: Path,
    options: ServeOptions,
    stop: threading.Event,
    say: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
) -> None:
    """Serve ``repo`` until ``stop`` is set; raises ``ServeError`` when the server keeps dying."""
    if not repo.is_dir():
        raise UsageError(f"model repository {repo} does not exist; run `gendeploy repo EXPORT_DIR`")
    check_repository(repo)
    key, key_file = _admin_key(options)
    server = TritonServer(
        repo,
        http_port=options.http_port,
        grpc_port=options.grpc_port,
        metrics_port=options.metrics_port,
        tritonserver=options.tritonserver,
        log_path=options.log_file,
        admin_key=key,
        watch=options.watch,
        http=options.http,
        env={THREADS_ENV: str(options.threads or cpus.available_cpus())},
    )
    server.cancel = stop  # Ctrl-C or SIGTERM while tritonserver starts: give up at once
    supervisor = Supervisor(server, options.policy, say=warn)
    state_files: list[Path] = []
    generated_key: Path | None = None
    if options.ready_file is not None:
        options.ready_file.unlink(missing_ok=True)  # a stale file from a killed server is not ready
    try:
        try:
            server.start()
        except StartCancelled:
            return
        if options.admin_key_file is None:
            generated_key = runtime_dir() / f"serve-{server.port}.key"
            key_file = generated_key
        if key_file is not None:
            write_key_file(key_file, key)
        state = ServeState(
            http=server.http_url if server.http else None,
            grpc=server.grpc_url,
            metrics=server.metrics_url,
            log=str(server.log_path),
            repo=str(server.repo_dir),
            admin_key_file=str(key_file or options.admin_key_file),
            serve_pid=os.getpid(),
            pid=server.process.pid if server.process else None,
            models=list(server.loaded),
            not_loaded=dict(server.skipped),
            since=now_iso(),
            started=now_iso(),
        )
        state_files = [state_path(server.port)]
        if options.ready_file is not None:
            state_files.append(options.ready_file)
        _announce(server, state, say)
        write_state(state, state_files)
        say("serving; Ctrl-C to stop")
        while not stop.wait(2.0 if options.watch else 0.5):
            if not server.running():
                state = replace(state, state="restarting", since=now_iso(), pid=None)
                state.last_crash = {"at": now_iso(), "status": server.exit_status()}
                state.last_crash["cause"] = server.crash_cause()
                write_state(state, state_files)
                if not supervisor.restart(stop):
                    break
                pid = server.process.pid if server.process else None
                restarts = server.starts - 1
                state = replace(state, state="serving", since=now_iso(), pid=pid, restarts=restarts)
                write_state(state, state_files)
            elif options.watch:
                _refresh(server, say, warn)
                if state.models != server.loaded:
                    state = replace(state, models=list(server.loaded))
                    write_state(state, state_files)
    finally:
        server.stop()
        for path in state_files:
            path.unlink(missing_ok=True)
        if generated_key is not None:
            generated_key.unlink(missing_ok=True)


def _announce(server: TritonServer, state: ServeState, say: Callable[[str], None]) -> None:
    for key in ("http", "grpc", "metrics", "log"):
        say(f"{key:8s} {getattr(state, key) or 'off (gRPC only)'}")
    locked = ", ".join(LOCKED_APIS)
    say(f"admin    key in {state.admin_key_file} (header {ADMIN_HEADER}; locks {locked})")
    if not proc_hides_commands():
        say(
            "         note: other local users can read the key in tritonserver's command line "
            "(/proc has no hidepid); on a shared host see docs/security.md"
        )
    if not server.watch:
        say("         models are fixed while serving (no --watch): nothing can load or unload")
    log = server.log_text()
    for model in server.loaded:
        say(f"model    {model}: {served_artifact(server.repo_dir, model, log)}")
    for model, why in server.skipped.items():
        say(f"skipped  {model}: {why}")


def _refresh(server: TritonServer, say: Callable[[str], None], warn: Callable[[str], None]) -> None:
    """Load what changed on disk; a bad new version is reported and the old one keeps serving."""
    try:
        changed = server.refresh()
    except ServeError as e:
        warn(f"error: {e}")
        return
    for model in changed:
        say(f"loaded   {model} (new version or config)")
