"""`gendeploy bench`: run a bench suite and write its report (JSON, Markdown, PNG plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gendeploy.cli.help import LateHelp, Params
from gendeploy.errors import UsageError

Opt = typer.Option


def positive_ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    """``1,8,64``: a flag's comma-separated integers >= 1, reported as typer reports any flag's
    bad value. (A ``tuple[int, ...]`` option with a parser took the next flags as its values.)"""
    if text is None:
        return None
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not comma-separated integers, e.g. 1,8,64", param_hint=f"'{flag}'"
        ) from None
    if min(values) < 1:
        raise typer.BadParameter(f"{text!r}: every value must be >= 1", param_hint=f"'{flag}'")
    return values


RUNNERS_HELP = "Only these runners, comma-separated (eager is always timed)."


class BenchHelp(LateHelp):
    """``--runners`` help lists the registry's runner names, which live beside torch."""

    def fill(self, params: Params) -> None:
        from gendeploy.runtime.registry import runner_names

        params["runners"].help = f"{RUNNERS_HELP} Known: {', '.join(runner_names())}."


def bench_command(
    suite: Annotated[
        str, Opt(help="Suite: default (~10 min), quick (~1 min) or tiny.")
    ] = "default",
    out: Annotated[Path, Opt(help="Directory for bench.json, bench.md and the plots.")] = Path(
        "bench"
    ),
    batches: Annotated[
        str | None, Opt(metavar="N,N,...", help="Override the batch sizes, e.g. 1,8,64.")
    ] = None,
    concurrency: Annotated[
        str | None,
        Opt(metavar="N,N,...", help="Override the served concurrency levels, e.g. 1,4."),
    ] = None,
    runners: Annotated[str | None, Opt(help=RUNNERS_HELP)] = None,
    served: Annotated[
        bool, Opt("--served/--no-served", help="Also bench the model behind tritonserver.")
    ] = True,
    models: Annotated[
        str | None, Opt(help="Only these of the suite's models, comma-separated (e.g. dcgan64).")
    ] = None,
    window: Annotated[float | None, Opt(help="Measurement window in seconds.")] = None,
    queue_delay_us: Annotated[
        int | None, Opt(help="Served model's dynamic-batching delay (default: the repo's).")
    ] = None,
    instances: Annotated[
        int | None, Opt(help="Served model's instances (default: the repository's, 2 on CPU).")
    ] = None,
    threads: Annotated[
        int | None, Opt(help="Threads per runner (default: the suite's; 0: the CPUs we may use).")
    ] = None,
    work_dir: Annotated[
        Path | None, Opt(help="Keep checkpoints, exports and the Triton repo here (default: temp).")
    ] = None,
    from_json: Annotated[
        Path | None, Opt(help="Re-render bench.md and plots from a recorded bench.json; no timing.")
    ] = None,
) -> None:
    """Time every runner against eager PyTorch in one run; write JSON, Markdown and plots."""
    from gendeploy.bench.suites import ALL_RUNNERS, get_suite, with_overrides

    if from_json is not None:
        from gendeploy.bench.report import load_report, write_report

        written = write_report(load_report(from_json), out)
        typer.echo(f"wrote {', '.join(str(p) for p in written)}")
        return
    names = tuple(runners.split(",")) if runners else None
    if names and set(names) - set(ALL_RUNNERS):
        unknown = sorted(set(names) - set(ALL_RUNNERS))
        raise UsageError(f"--runners: unknown {unknown}; known: {', '.join(ALL_RUNNERS)}")
    if window is not None and not 0 < window <= 60:
        raise UsageError(f"--window must be in (0, 60] seconds, got {window}")
    chosen = with_overrides(
        get_suite(suite),
        batches=positive_ints(batches, "--batches"),
        concurrencies=positive_ints(concurrency, "--concurrency"),
        runners=names,
        served=served,
        window_s=window,
        threads=threads,
        models=tuple(models.split(",")) if models else None,
        queue_delay_us=queue_delay_us,
        instances=instances,
    )
    from rich.console import Console

    from gendeploy.bench.run import run_bench

    console = Console(stderr=True)
    report = run_bench(
        chosen, out, work_dir, log=lambda msg: console.print(msg, highlight=False, markup=False)
    )
    for goal in report.goals:
        verdict = {True: "met", False: "MISSED", None: "not judged"}[goal.met]
        typer.echo(f"goal: {goal.goal}: {goal.measured} ({goal.by}) -> {verdict}")
    typer.echo(f"report: {out / 'bench.md'}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("bench", cls=BenchHelp)(bench_command)
