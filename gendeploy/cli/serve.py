"""``gendeploy repo``, ``gendeploy serve`` and ``gendeploy generate``."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gendeploy.errors import ServeError, UsageError

if TYPE_CHECKING:
    from gendeploy.serve.server import TritonServer

DEFAULT_REPO = Path("triton_repo")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def repo_command(
    export_dir: Annotated[Path, typer.Argument(help="Export directory (with manifest.json).")],
    repo: Annotated[Path, typer.Option("--repo", help="Model repository to write.")] = DEFAULT_REPO,
    name: Annotated[str | None, typer.Option(help="Model name (default: the export's).")] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Triton max_batch_size (default: export's max).")
    ] = None,
    queue_delay_us: Annotated[int, typer.Option(help="Dynamic batching queue delay.")] = 2000,
    instances: Annotated[int, typer.Option(help="Model instances per device.")] = 1,
    keep_versions: Annotated[int, typer.Option(help="Versions kept on disk per model.")] = 2,
    gpu: Annotated[
        bool | None, typer.Option("--gpu/--cpu", help="Instance kind (default: GPU if an engine).")
    ] = None,
) -> None:
    """Write (or add a version to) the Triton models of an export."""
    from gendeploy.serve.repo import RepoOptions, write_repo

    options = RepoOptions(name, max_batch_size, queue_delay_us, instances, keep_versions, gpu)
    for model in write_repo(export_dir, repo, options):
        state = "new version" if model.new else "unchanged"
        typer.echo(f"{model.path}/{model.version}  ({state})")


def serve_command(
    repo: Annotated[Path, typer.Argument(help="Model repository to serve.")] = DEFAULT_REPO,
    http_port: Annotated[int, typer.Option(help="HTTP port (0: a free one).")] = 0,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0: a free one).")] = 0,
    metrics_port: Annotated[int, typer.Option(help="Metrics port (0: a free one).")] = 0,
    tritonserver: Annotated[
        Path | None, typer.Option(help="tritonserver binary (default: PATH, then nvidia-pytriton).")
    ] = None,
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the endpoints as JSON here once ready.")
    ] = None,
    log_file: Annotated[
        Path | None, typer.Option(help="Server log (default: a temp file).")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Load new versions and models as they are written.")
    ] = False,
    docker: Annotated[
        bool, typer.Option("--docker", help="Print the NGC container command instead.")
    ] = False,
    docker_tag: Annotated[str | None, typer.Option(help="NGC tag for --docker.")] = None,
) -> None:
    """Serve a model repository with a real tritonserver on 127.0.0.1 until Ctrl-C or SIGTERM."""
    if not repo.is_dir():
        raise UsageError(f"model repository {repo} does not exist; run `gendeploy repo EXPORT_DIR`")
    if docker:
        from gendeploy.serve.docker import docker_command, tag_check

        command, why, tag = docker_command(repo, docker_tag)
        typer.echo(command)
        typer.echo(f"# tag {tag}: {why}")
        typer.echo(f"# its TensorRT: {tag_check(tag)}")
        typer.echo("# loads the *_onnx and *_trt models (Triton's own backends); the python")
        typer.echo("# models are not loaded: the NGC image has no onnxruntime Python package")
        return
    from gendeploy.serve.server import TritonServer

    stop = threading.Event()
    # handled explicitly: a shell's background job starts with SIGINT ignored
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    server = TritonServer(
        repo,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        tritonserver=tritonserver,
        log_path=log_file,
    )
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)  # a stale file from a killed server is not "ready"
    try:
        server.start()
        endpoints = server.endpoints()
        endpoints["models"] = server.loaded
        endpoints["not_loaded"] = server.skipped
        for key in ("http", "grpc", "metrics", "log"):
            typer.echo(f"{key:8s} {endpoints[key]}")
        for model in server.loaded:
            typer.echo(f"model    {model}")
        for model, why in server.skipped.items():
            typer.echo(f"skipped  {model}: {why}")
        if ready_file is not None:
            from gendeploy.fileio import atomic_write

            text = json.dumps(endpoints, indent=2) + "\n"
            atomic_write(ready_file, lambda f: f.write(text.encode()))
        typer.echo("serving; Ctrl-C to stop")
        while not stop.wait(2.0 if watch else 0.5):
            if not server.running():
                raise ServeError(f"tritonserver exited unexpectedly (log: {server.log_path})")
            if watch:
                _refresh(server)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
        typer.echo("stopped")


def _refresh(server: TritonServer) -> None:
    try:
        for model in server.refresh():
            typer.echo(f"loaded   {model} (new version or config)")
    except ServeError as e:  # a bad new version: keep serving what is loaded
        typer.echo(f"error: {e}", err=True)


def generate_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG grid to write.")] = Path(
        "generated.png"
    ),
    n: Annotated[int, typer.Option("-n", help="Number of images.")] = 16,
    model: Annotated[str | None, typer.Option(help="Served model (default: the only one).")] = None,
    url: Annotated[str | None, typer.Option(help="Server host:port for --protocol.")] = None,
    ready_file: Annotated[
        Path | None, typer.Option(help="Read the URL from `gendeploy serve --ready-file`.")
    ] = None,
    wait_s: Annotated[
        float, typer.Option(help="Wait this long for --ready-file to appear (server starting).")
    ] = 0.0,
    protocol: Annotated[str, typer.Option(help="http or grpc.")] = "http",
    label: Annotated[
        int | None, typer.Option(help="Class for every image (default: cycle classes).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Images are seeds seed..seed+n-1.")] = 0,
    client_latents: Annotated[
        bool, typer.Option(help="Draw z here (same RNG) instead of on the server.")
    ] = False,
    truncation: Annotated[
        float | None, typer.Option(help="Truncation psi (models that take it; default theirs).")
    ] = None,
) -> None:
    """Ask a served model for N images and write them as a PNG grid."""
    from gendeploy.runtime.triton import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if url is not None and ready_file is not None:
        raise UsageError("pass --url or --ready-file, not both")
    from gendeploy.serve.client import endpoints_from_ready_file, generate, save_grid

    if ready_file is not None:
        url = endpoints_from_ready_file(ready_file, protocol, wait_s)
    url = url or ("127.0.0.1:8000" if protocol == "http" else "127.0.0.1:8001")
    images, info = generate(
        url,
        model,
        n,
        protocol=protocol,
        label=label,
        seed=seed,
        client_latents=client_latents,
        truncation=truncation,
    )
    save_grid(images, out)
    typer.echo(
        f"{out}: {n} images from {info.name} ({protocol} {url}), seeds {seed}..{seed + n - 1}"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("repo")(repo_command)
    app.command("serve")(serve_command)
    app.command("generate")(generate_command)
