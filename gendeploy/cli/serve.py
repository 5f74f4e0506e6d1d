"""``gendeploy repo``, ``gendeploy serve`` and ``gendeploy generate``."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from gendeploy.cli.options import Threads, use_threads
from gendeploy.errors import UsageError
from gendeploy.protocol import Protocol
from gendeploy.serve.admin import KEY_ENV
from gendeploy.serve.readyfile import DEFAULT_PORTS

DEFAULT_REPO = Path("triton_repo")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def repo_command(
    export_dir: Annotated[Path, typer.Argument(help="Export directory (with manifest.json).")],
    repo: Annotated[Path, typer.Option("--repo", help="Model repository to write.")] = DEFAULT_REPO,
    name: Annotated[str | None, typer.Option(help="Model name (default: the export's).")] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Triton max_batch_size (default: export's max).")
    ] = None,
    queue_delay_us: Annotated[
        int,
        typer.Option(
            help="Dynamic batching delay: how long a batch may wait for more requests (0: none; "
            "batches still form from what queues while the model is busy)."
        ),
    ] = 0,
    instances: Annotated[
        int,
        typer.Option(
            help="Model instances per device (0: two for a noise-to-image model on CPU, "
            "splitting the CPUs, else one)."
        ),
    ] = 0,
    keep_versions: Annotated[int, typer.Option(help="Versions kept on disk per model.")] = 2,
    gpu: Annotated[
        bool | None, typer.Option("--gpu/--cpu", help="Instance kind (default: GPU if an engine).")
    ] = None,
    max_queue_size: Annotated[
        int,
        typer.Option(
            help="Requests queued per model beyond this are refused (0: no limit). Any limit "
            "makes Triton's batcher stall some requests by 500 ms under load "
            "(docs/served-path.md)."
        ),
    ] = 0,
    max_megapixels: Annotated[
        float, typer.Option(help="Image-to-image: input pixels a request may hold (millions).")
    ] = 4.2,
) -> None:
    """Write (or add a version to) the Triton models of an export."""
    from gendeploy.serve.repo import RepoOptions, write_repo

    options = RepoOptions(
        name,
        max_batch_size,
        queue_delay_us,
        instances,
        keep_versions,
        gpu,
        max_queue_size=max_queue_size,
        max_megapixels=max_megapixels,
    )
    for model in write_repo(export_dir, repo, options):
        state = "new version" if model.new else "unchanged"
        typer.echo(f"{model.path}/{model.version}  ({state})")


def serve_command(
    repo: Annotated[Path, typer.Argument(help="Model repository to serve.")] = DEFAULT_REPO,
    http_port: Annotated[int, typer.Option(help="HTTP port (0: a free one).")] = DEFAULT_PORTS[0],
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0: a free one).")] = DEFAULT_PORTS[1],
    metrics_port: Annotated[
        int, typer.Option(help="Metrics port (0: a free one).")
    ] = DEFAULT_PORTS[2],
    tritonserver: Annotated[
        Path | None, typer.Option(help="tritonserver binary (default: PATH, then nvidia-pytriton).")
    ] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option(help="Also write the server's state (JSON) here; kept true while serving."),
    ] = None,
    log_file: Annotated[
        Path | None, typer.Option(help="Server log (default: a temp file).")
    ] = None,
    admin_key_file: Annotated[
        Path | None,
        typer.Option(
            help="The key that unlocks model control, shared memory, trace and logging: read "
            "from this file (0600), or generated into it if missing (default: a new key per "
            "server in the runtime dir, removed at stop)."
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Load new versions and models as they are written.")
    ] = False,
    no_http: Annotated[
        bool,
        typer.Option(
            "--no-http",
            help="Serve gRPC only: Triton 2.51's HTTP frontend aborts on some malformed requests "
            "(docs/security.md); use it where untrusted clients can reach the server.",
        ),
    ] = False,
    max_failed_starts: Annotated[
        int,
        typer.Option(
            help="Give up after this many starts that die before ready within --crash-window-s "
            "(a server that crashes after it was ready is always restarted)."
        ),
    ] = 5,
    crash_window_s: Annotated[
        float, typer.Option(help="Window for --max-failed-starts and the restart backoff.")
    ] = 300.0,
    threads: Threads = None,
    docker: Annotated[
        bool, typer.Option("--docker", help="Print the NGC container command instead.")
    ] = False,
    docker_tag: Annotated[str | None, typer.Option(help="NGC tag for --docker.")] = None,
) -> None:
    """Serve a model repository with a real tritonserver on 127.0.0.1 until Ctrl-C or SIGTERM;
    restart it if it dies."""
    if docker:
        _print_docker_command(repo, docker_tag, http=not no_http)
        return
    from gendeploy.cpus import requested_threads
    from gendeploy.serve.service import ServeOptions, serve
    from gendeploy.serve.supervisor import RestartPolicy

    options = ServeOptions(
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        tritonserver=tritonserver,
        log_file=log_file,
        ready_file=ready_file,
        admin_key_file=admin_key_file,
        watch=watch,
        http=not no_http,
        threads=requested_threads(threads)[0],
        policy=RestartPolicy(max_failed_starts=max_failed_starts, window_s=crash_window_s),
    )
    stop = threading.Event()
    # handled explicitly: a shell's background job starts with SIGINT ignored
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        serve(repo, options, stop, say=typer.echo, warn=lambda m: typer.echo(m, err=True))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        typer.echo("stopped")


def _print_docker_command(repo: Path, docker_tag: str | None, http: bool) -> None:
    from gendeploy.serve.docker import docker_command, tag_check

    if not repo.is_dir():
        raise UsageError(f"model repository {repo} does not exist; run `gendeploy repo EXPORT_DIR`")
    command, why, tag = docker_command(repo, docker_tag, http=http)
    typer.echo("# the admin key locks model control, shared memory, trace and logging; keep it:")
    typer.echo(
        f"export {KEY_ENV}=\"$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')\""
    )
    typer.echo(command)
    typer.echo(f"# tag {tag}: {why}")
    typer.echo(f"# its TensorRT: {tag_check(tag)}")
    typer.echo("# loads the *_onnx and *_trt models (Triton's own backends); the python")
    typer.echo("# models are not loaded: the NGC image has no onnxruntime Python package")


def generate_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG grid to write.")] = Path(
        "generated.png"
    ),
    n: Annotated[int, typer.Option("--num-images", "-n", help="Number of images.")] = 16,
    model: Annotated[str | None, typer.Option(help="Served model (default: the only one).")] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Server host:port for --protocol (default: the running `gendeploy serve`, "
            "else 127.0.0.1:8000 / 8001)."
        ),
    ] = None,
    ready_file: Annotated[
        Path | None, typer.Option(help="Read the URL from `gendeploy serve --ready-file`.")
    ] = None,
    wait_s: Annotated[
        float, typer.Option(help="Wait this long for --ready-file to appear (server starting).")
    ] = 0.0,
    protocol: Annotated[
        Protocol, typer.Option(help="What to speak to the server.")
    ] = Protocol.http,
    label: Annotated[
        int | None, typer.Option(help="Class for every image (default: cycle classes).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Images are seeds seed..seed+n-1.")] = 0,
    client_latents: Annotated[
        bool, typer.Option(help="Draw z here (same RNG) instead of on the server.")
    ] = False,
    truncation: Annotated[
        float | None,
        typer.Option(
            help="Truncation psi (models that take it; default theirs). The server refuses psi "
            "outside the range the export's gate checked (its manifest's truncation_range)."
        ),
    ] = None,
) -> None:
    """Ask a served model for N images and write them as a PNG grid."""
    if url is not None and ready_file is not None:
        raise UsageError("pass --url or --ready-file, not both")
    from gendeploy.serve.client import find_server, generate, save_grid

    url, models = find_server(url, ready_file, protocol.value, wait_s)
    images, info = generate(
        url,
        model,
        n,
        protocol=protocol.value,
        label=label,
        seed=seed,
        client_latents=client_latents,
        served_models=models,
        truncation=truncation,
    )
    save_grid(images, out)
    typer.echo(
        f"{out}: {n} images from {info.name} ({protocol.value} {url}), seeds {seed}..{seed + n - 1}"
    )


def upscale_command(
    image: Annotated[Path, typer.Argument(help="PNG or JPEG file to send.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (.png, .jpg, .webp).")],
    model: Annotated[str | None, typer.Option(help="Served model (default: the only one).")] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Server host:port for --protocol (default: the running `gendeploy serve`, "
            "else 127.0.0.1:8000 / 8001)."
        ),
    ] = None,
    ready_file: Annotated[
        Path | None, typer.Option(help="Read the URL from `gendeploy serve --ready-file`.")
    ] = None,
    wait_s: Annotated[
        float, typer.Option(help="Wait this long for --ready-file to appear (server starting).")
    ] = 0.0,
    protocol: Annotated[
        Protocol, typer.Option(help="What to speak to the server.")
    ] = Protocol.http,
    send: Annotated[
        str, typer.Option(help="bytes: the file as it is (the server decodes it); pixels: UINT8.")
    ] = "bytes",
    timeout_s: Annotated[float, typer.Option(help="Give up on the server after this long.")] = 600,
    export: Annotated[
        Path | None,
        typer.Option(help="Run this image export's ONNX here (tiled, a progress bar), no server."),
    ] = None,
    threads: Threads = None,
) -> None:
    """Upscale (or translate) an image with a served image-to-image model and write the result."""
    if url is not None and ready_file is not None:
        raise UsageError("pass --url or --ready-file, not both")
    from gendeploy.serve.client import find_server
    from gendeploy.serve.upscale import Send, upscale_file, upscale_local

    if send not in {s.value for s in Send}:
        raise UsageError(f"--send must be bytes or pixels, got {send!r}")
    if export is not None:
        if url is not None or ready_file is not None or model is not None:
            raise UsageError("--export runs here: drop --url, --ready-file and --model")
        use_threads(threads)
        done = upscale_local(image, out, export, threads=threads)
        (w, h), (ow, oh) = done.size_in, done.size_out
        typer.echo(f"{out}: {ow} x {oh} from {image} ({w} x {h}) by {done.model} (here)")
        return
    url, models = find_server(url, ready_file, protocol.value, wait_s)
    done = upscale_file(
        image,
        out,
        url,
        model,
        protocol.value,
        Send(send),
        served_models=models,
        timeout_s=timeout_s,
    )
    (w, h), (ow, oh) = done.size_in, done.size_out
    typer.echo(
        f"{out}: {ow} x {oh} from {image} ({w} x {h}) by {done.model} ({protocol.value} {url})"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("repo")(repo_command)
    app.command("serve")(serve_command)
    app.command("generate")(generate_command)
    app.command("upscale")(upscale_command)
