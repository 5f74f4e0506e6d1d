"""`gendeploy export` and `gendeploy doctor`."""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gendeploy.cli.options import Threads, use_threads
from gendeploy.errors import Interrupted, UsageError
from gendeploy.manifest import NoiseMode, OutputKind

if TYPE_CHECKING:
    from rich.console import Console

    from gendeploy.bench.doctor import Report

Opt = typer.Option
# an export that published some of what was asked for and refused the rest (the manifest's
# ``skipped`` says what and why); 0: everything asked for, 1: an error, 2: a usage error,
# 128 + N: signal N
PARTIAL_EXIT = 3


def export_command(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(help="A checkpoint from `gendeploy train` (or its run directory)."),
    ] = None,
    name: Annotated[str | None, Opt(help="Model name (default: the run directory's name).")] = None,
    out: Annotated[Path | None, Opt(help="Export directory (default exports/<name>).")] = None,
    fp16: Annotated[
        bool, Opt("--fp16", help="Also an FP16 ONNX and, with TensorRT + CUDA, an FP16 engine.")
    ] = False,
    output: Annotated[
        OutputKind, Opt(help="float: float32 NCHW in [-1,1]; uint8: also uint8 NHWC variants.")
    ] = OutputKind.float,
    max_batch: Annotated[int, Opt(help="Largest batch (Triton's max_batch_size).")] = 64,
    opt_batch: Annotated[
        int, Opt(help="Batch TensorRT tunes for.", show_default="min(8, --max-batch)")
    ] = 0,
    force: Annotated[bool, Opt("--force", help="Rebuild and replace an existing export.")] = False,
    require_engine: Annotated[
        bool, Opt("--require-engine", help="Fail unless a TensorRT engine is built.")
    ] = False,
    model: Annotated[
        str | None, Opt(help="A user generator: path/file.py:Class or package.module:factory.")
    ] = None,
    weights: Annotated[
        Path | None,
        Opt(
            help="--model's state dict (.safetensors or .pt, weights only); not needed for a "
            "factory whose attribute gendeploy_loads_weights is True."
        ),
    ] = None,
    random_weights: Annotated[
        bool,
        Opt(
            "--random-weights", help="--model without weights: export its untrained (seeded) init."
        ),
    ] = False,
    latent_dim: Annotated[int | None, Opt(help="--model: latent size.")] = None,
    num_classes: Annotated[int | None, Opt(help="--model: classes (0: unconditional).")] = None,
    image_shape: Annotated[str | None, Opt(help="--model: output image shape C,H,W.")] = None,
    repo: Annotated[
        Path | None, Opt(help="Also write (or add a version to) the Triton models in this repo.")
    ] = None,
    int8: Annotated[
        bool,
        Opt(
            "--int8",
            help="Also INT8 (NNCF post-training quantization, QDQ ONNX run by OpenVINO), "
            "published only if it passes the quality gate.",
        ),
    ] = False,
    calibration_samples: Annotated[
        int | None,
        Opt(help="--int8: inputs to calibrate on, z ~ N(0,I) + uniform labels (default 256)."),
    ] = None,
    max_frechet_ratio: Annotated[
        float,
        Opt(help="Quality gate: largest Frechet ratio (artifact vs FP32 / FP32's noise floor)."),
    ] = 1.10,
    quality_samples: Annotated[
        int | None,
        Opt(
            help="Quality gate: seeds per set (>= 256).",
            show_default="1000, fewer (down to 256) where FP32 takes over a minute to draw them",
        ),
    ] = None,
    strict: Annotated[
        bool,
        Opt(
            "--strict",
            help="All or nothing: a refused --fp16/--int8 fails the export (default: publish "
            "what passed, exit 3).",
        ),
    ] = False,
    forward_kwargs: Annotated[
        str | None,
        Opt(help="--model: keyword arguments for every forward call, name=value,... (manifest)."),
    ] = None,
    noise: Annotated[
        NoiseMode,
        Opt(help="--model: const (noise buffers as they are) or seeded (drawn per request)."),
    ] = NoiseMode.const,
    tile: Annotated[
        int,
        Opt(help="Image-to-image: a tile's side in input pixels (0: 128, to the size multiple)."),
    ] = 0,
    tile_margin: Annotated[
        int | None,
        Opt(help="Image-to-image: pixels read around each tile.", show_default="measured"),
    ] = None,
    in_channels: Annotated[
        int | None, Opt(help="Image-to-image --model: input channels (default: probed).")
    ] = None,
    scale: Annotated[
        int | None, Opt(help="Image-to-image --model: its scale, checked against the probe.")
    ] = None,
    value_range: Annotated[
        str | None,
        Opt(help="Image-to-image --model: its pixels, 0,1 or -1,1 (default: its value_range)."),
    ] = None,
    threads: Threads = None,
) -> None:
    """Export a generator, or an image-to-image model (a digits-sr4x checkpoint, a published
    .safetensors/.pth, or --model without --latent-dim), to gated ONNX (FP32, uint8, FP16, INT8)
    and TensorRT, with a manifest."""
    from gendeploy.export.api import export
    from gendeploy.export.options import ExportOptions, ModelSpec
    from gendeploy.export.signature import parse_forward_kwargs

    options = ExportOptions(
        fp16=fp16,
        output=output,
        max_batch=max_batch,
        opt_batch=opt_batch,
        require_engine=require_engine,
        int8=int8,
        calibration_samples=calibration_samples,
        max_frechet_ratio=max_frechet_ratio,
        tile=tile,
        tile_margin=tile_margin,
        quality_seeds=quality_samples,
        strict=strict,
    )
    spec = ModelSpec(
        checkpoint=checkpoint,
        model=model,
        weights=weights,
        latent_dim=latent_dim,
        num_classes=num_classes,
        image_shape=_parse_shape(image_shape) if image_shape is not None else None,
        forward_kwargs=parse_forward_kwargs(forward_kwargs) if forward_kwargs else None,
        noise=noise.value,
        random_weights=random_weights,
        in_channels=in_channels,
        scale=scale,
        value_range=_parse_range(value_range) if value_range is not None else None,
    )
    use_threads(threads)
    try:
        manifest = export(
            spec,
            options,
            name=name,
            out=out,
            force=force,
            command=shlex.join(["gendeploy", *sys.argv[1:]]),
            log=typer.echo,
        )
    except KeyboardInterrupt:  # typer would exit 130 without a word: say it like SIGTERM
        raise Interrupted(signal.SIGINT) from None
    if manifest.source.random_weights:
        typer.echo("warning: --random-weights: the export holds untrained weights", err=True)
    reasons: dict[str, list[str]] = {}  # one line per reason: TensorRT missing is said once
    for item in manifest.skipped:
        if "stage" not in item:  # refused ones are the last line
            reasons.setdefault(item["reason"], []).append(item["name"])
    for reason, names in reasons.items():
        typer.echo(f"NOT built: {', '.join(names)} ({reason})")
    if repo is not None:
        from gendeploy.serve.repo import write_repo

        for written in write_repo(out or Path("exports") / manifest.name, repo):
            state = "new version" if written.new else "unchanged"
            typer.echo(f"triton model {written.path}/{written.version} ({state})")
    if manifest.refused:  # a partial result: what was published, what was refused and why
        published = ", ".join(a.name for a in manifest.artifacts)
        refused = "; ".join(f"{s['name']}: {s['reason']}" for s in manifest.refused)
        typer.echo(f"published {published}; refused {refused}", err=True)
        raise typer.Exit(PARTIAL_EXIT)


def doctor_command() -> None:
    """List what this machine can do: CUDA, TensorRT, ONNX Runtime, OpenVINO, Triton."""
    from rich.console import Console

    from gendeploy.bench.doctor import diagnose

    print_report(diagnose(), Console())


def print_report(report: Report, console: Console) -> None:
    """The doctor's findings as two tables; their text is printed as is, never as rich markup
    (``pip install 'gendeploy[openvino]'`` keeps its brackets)."""
    from rich.markup import escape
    from rich.table import Table

    for title, rows in (("this machine", report.facilities), ("paths", report.paths)):
        table = Table(title=title, title_justify="left")
        table.add_column("")
        table.add_column("what")
        table.add_column("detail", overflow="fold")
        for f in rows:
            table.add_row(
                "[green]yes[/]" if f.ok else "[red]no[/]", escape(f.what), escape(f.detail)
            )
        console.print(table)


def _parse_shape(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--image-shape must be C,H,W (e.g. 3,64,64), got {text!r}") from None
    return c, h, w


def _parse_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--value-range must be 0,1 or -1,1, got {text!r}") from None
    return lo, hi


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("export")(export_command)
    app.command("doctor")(doctor_command)
