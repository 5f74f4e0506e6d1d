"""``gendeploy tune``: search the served configuration of one model with Model Analyzer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gendeploy.errors import UsageError
from gendeploy.tune.space import Objective, Protocol, SearchMode, SearchSpace

_DEFAULT = SearchSpace()
NO_WINNER = 3  # exit code: measured, but nothing met the constraints


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{flag} takes integers separated by commas, got {text!r}") from None


def _join(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


def tune_command(
    repo: Annotated[Path, typer.Argument(help="Model repository (`gendeploy repo` writes one).")],
    model: Annotated[str, typer.Option(help="The python-backend model to tune.")],
    objective: Annotated[
        Objective, typer.Option(help="throughput: most img/s; latency: least p99.")
    ] = Objective.throughput,
    p99_budget_ms: Annotated[
        float | None, typer.Option(help="Constraint: p99 latency at most this (ms).")
    ] = None,
    min_throughput: Annotated[
        float | None, typer.Option(help="Constraint: at least this many img/s.")
    ] = None,
    concurrency: Annotated[
        str, typer.Option(help="Concurrent clients measured, e.g. 4 or 1,4,8.")
    ] = "4",
    search: Annotated[
        SearchMode, typer.Option(help="quick: hill climbing; exhaustive: every combination.")
    ] = SearchMode.quick,
    instances: Annotated[str, typer.Option(help="Instance counts.")] = _join(_DEFAULT.instances),
    threads: Annotated[
        str,
        typer.Option(
            help="ONNX Runtime threads per instance (0: the CPUs split among the instances)."
        ),
    ] = _join(_DEFAULT.threads),
    max_batch_sizes: Annotated[str, typer.Option(help="Max batch sizes.")] = _join(
        _DEFAULT.max_batch_sizes
    ),
    queue_delays_us: Annotated[str, typer.Option(help="Dynamic batching delays (us).")] = _join(
        _DEFAULT.queue_delays_us
    ),
    preferred_batches: Annotated[
        str, typer.Option(help="Preferred batch sizes (0: none).")
    ] = _join(_DEFAULT.preferred_batches),
    protocols: Annotated[str, typer.Option(help="http, grpc or both.")] = "http,grpc",
    max_configs: Annotated[int, typer.Option(help="Stop after this many configurations.")] = 40,
    window_ms: Annotated[int, typer.Option(help="perf_analyzer measurement window (ms).")] = 2000,
    stability_percentage: Annotated[
        int, typer.Option(help="perf_analyzer: windows agree within this %.")
    ] = 15,
    max_trials: Annotated[
        int, typer.Option(help="perf_analyzer: windows per run (3 runs, 1 s longer each).")
    ] = 8,
    out: Annotated[
        Path | None, typer.Option(help="Report directory (default: tune/<model>).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace the earlier run's report and work folder in --out.")
    ] = False,
    write: Annotated[
        bool, typer.Option("--write/--dry-run", help="Write the winner as a new version.")
    ] = True,
    keep_versions: Annotated[int, typer.Option(help="Versions kept on disk per model.")] = 2,
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Time in-process batch 1 too.")
    ] = True,
    tritonserver: Annotated[Path | None, typer.Option(help="tritonserver binary.")] = None,
) -> None:
    """Find the served configuration with the most images/s within a p99 budget (or the least
    p99 above a throughput floor), measured on the real server by Model Analyzer; write it as a
    new version of the model and a report (table, throughput-vs-p99 PNG, the command)."""
    from gendeploy.tune.api import TuneOptions, tune

    try:
        chosen = tuple(Protocol(p.strip()) for p in protocols.split(",") if p.strip())
    except ValueError:
        raise UsageError(f"--protocols takes http, grpc or both, got {protocols!r}") from None
    space = SearchSpace(
        _ints(instances, "--instances"),
        _ints(threads, "--threads"),
        _ints(max_batch_sizes, "--max-batch-sizes"),
        _ints(queue_delays_us, "--queue-delays-us"),
        _ints(preferred_batches, "--preferred-batches"),
        chosen,
    )
    options = TuneOptions(
        model=model,
        objective=objective,
        p99_budget_ms=p99_budget_ms,
        min_throughput=min_throughput,
        concurrencies=_ints(concurrency, "--concurrency"),
        search=search,
        space=space,
        max_configs=max_configs,
        window_ms=window_ms,
        stability_pct=stability_percentage,
        max_trials=max_trials,
        write=write,
        keep_versions=keep_versions,
        baseline=baseline,
        tritonserver=tritonserver,
    )
    where = out or Path("tune") / model
    report = tune(repo, options, where, say=typer.echo, force=force)
    typer.echo(f"report: {where}/tune.md, {where}/tune.png, {where}/tune.json")
    if report.winner is None:
        typer.echo(
            "error: no configuration met the constraints; nothing written (see the report)",
            err=True,
        )
        raise typer.Exit(NO_WINNER)
    ratio = report.ratio()
    w = report.winner.measurement
    typer.echo(
        f"winner: {w.throughput:.1f} img/s, p99 {w.p99_ms:.2f} ms at concurrency "
        f"{w.concurrency}" + (f" ({ratio:.2f}x in-process batch 1)" if ratio else "")
    )
    for note in report.notes:
        typer.echo(f"note: {note}")
    if report.written:
        typer.echo(f"written: {', '.join(report.written)} (serve --watch loads them)")


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_command)
