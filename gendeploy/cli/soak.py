"""`gendeploy soak`: serve an export under steady load for minutes; report failures and memory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gendeploy.errors import GendeployError

Opt = typer.Option


class SoakFailed(GendeployError):
    """The soak ran, and missed a target (failed requests, or memory that grew)."""


def soak_command(
    export_dir: Annotated[Path, typer.Argument(help="Export directory (with manifest.json).")],
    out: Annotated[Path, Opt(help="Directory for soak.json, soak.md and soak.png.")] = Path(
        "bench/soak"
    ),
    duration_s: Annotated[float, Opt(help="How long to drive the server.")] = 300.0,
    concurrency: Annotated[int, Opt(help="Requests in flight (batch 1 each).")] = 8,
    window_s: Annotated[float, Opt(help="perf_analyzer measurement window.")] = 5.0,
    warmup_s: Annotated[float, Opt(help="Memory before this is not compared.")] = 30.0,
    tail_s: Annotated[float, Opt(help="Memory is compared over this long at each end.")] = 30.0,
    max_growth: Annotated[float, Opt(help="Largest memory growth that passes (0.05: 5%).")] = 0.05,
    protocol: Annotated[str, Opt(help="http or grpc.")] = "http",
    threads: Annotated[
        int, Opt(help="ONNX Runtime threads per instance (0: the CPUs split among the instances).")
    ] = 0,
) -> None:
    """Drive the served model at a fixed concurrency and watch failures and memory."""
    from gendeploy.bench.soak import SoakOptions, soak

    options = SoakOptions(
        duration_s, concurrency, window_s, warmup_s, tail_s, max_growth, protocol, threads
    )
    report = soak(export_dir, out, options, say=typer.echo)
    summary = (
        f"{report.failed_requests} failed of {report.requests} requests, memory "
        f"{report.memory_growth():+.1%} after warm-up; report in {out}/soak.md"
    )
    if not report.passed():
        raise SoakFailed(f"soak missed its targets: {summary}")
    typer.echo(f"soak passed: {summary}")


def register(app: typer.Typer) -> None:
    app.command("soak")(soak_command)
