"""``tune(repo, TuneOptions(model=...))``: search the served configuration of one model on the
real server, choose under the user's budget, write the winner as a new version, report.

    prepare (a private one-model repository, perf_analyzer's input data, the baseline)
    -> search (quick or exhaustive; every measurement by Model Analyzer, tune.analyzer)
    -> choose (tune.search.Goal) -> write (tune.version) -> report (tune.report)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gendeploy.errors import MissingDependencyError, TuneError, UsageError
from gendeploy.serve.repo import parse_config
from gendeploy.tune.analyzer import AnalyzerRun, Constraints, Measurement, read_measurements
from gendeploy.tune.report import Baseline, TuneReport, measurement_row, write_report
from gendeploy.tune.search import Goal, Trials, exhaustive_search, quick_search
from gendeploy.tune.space import (
    Block,
    Candidate,
    Objective,
    SearchMode,
    SearchSpace,
    candidate_from_config,
)
from gendeploy.tune.version import latest_version, write_tuned_version

CONTENDED = 0.10  # other processes' share of the CPU above which the report says "contended"


@dataclass(frozen=True)
class TuneOptions:
    model: str
    objective: Objective = Objective.throughput
    p99_budget_ms: float | None = None
    min_throughput: float | None = None
    concurrencies: tuple[int, ...] = (4,)
    search: SearchMode = SearchMode.quick
    space: SearchSpace = field(default_factory=SearchSpace)
    max_configs: int = 40
    window_ms: int = 2000  # perf_analyzer --measurement-interval
    stability_pct: int = 15  # perf_analyzer --stability-percentage
    max_trials: int = 8  # perf_analyzer --max-trials
    write: bool = True
    keep_versions: int = 2
    baseline: bool = True
    tritonserver: Path | None = None

    def __post_init__(self) -> None:
        if not self.concurrencies or min(self.concurrencies) < 1:
            raise UsageError("--concurrency needs levels >= 1, e.g. 4 or 1,4,8")
        if self.p99_budget_ms is not None and self.p99_budget_ms <= 0:
            raise UsageError(f"--p99-budget-ms must be > 0, got {self.p99_budget_ms}")
        if self.min_throughput is not None and self.min_throughput <= 0:
            raise UsageError(f"--min-throughput must be > 0, got {self.min_throughput}")
        if self.max_configs < 1 or self.window_ms < 100 or self.max_trials < 3:
            raise UsageError("need --max-configs >= 1, --window-ms >= 100, --max-trials >= 3")
        if not 1 <= self.stability_pct <= 100:
            raise UsageError(f"--stability-percentage must be in 1..100, got {self.stability_pct}")
        if self.keep_versions < 2:
            raise UsageError("--keep-versions must be >= 2 (the served version stays)")


def command_line(repo: Path, o: TuneOptions) -> str:
    """The ``gendeploy tune`` command that reproduces a run with these options."""

    def ints(values: tuple[int, ...]) -> str:
        return ",".join(map(str, values))

    s = o.space
    args = ["gendeploy", "tune", str(repo), "--model", o.model, "--objective", o.objective.value]
    if o.p99_budget_ms is not None:
        args += ["--p99-budget-ms", f"{o.p99_budget_ms:g}"]
    if o.min_throughput is not None:
        args += ["--min-throughput", f"{o.min_throughput:g}"]
    args += [
        "--concurrency", ints(o.concurrencies), "--search", o.search.value,
        "--instances", ints(s.instances), "--threads", ints(s.threads),
        "--max-batch-sizes", ints(s.max_batch_sizes),
        "--queue-delays-us", ints(s.queue_delays_us),
        "--preferred-batches", ints(s.preferred_batches),
        "--protocols", ",".join(p.value for p in s.protocols),
        "--max-configs", str(o.max_configs), "--window-ms", str(o.window_ms),
        "--stability-percentage", str(o.stability_pct), "--max-trials", str(o.max_trials),
    ]  # fmt: skip
    return shlex.join(args)


def _require_tools(options: TuneOptions) -> tuple[Any, Path]:
    from gendeploy.bench.served import find_perf_analyzer
    from gendeploy.serve.tritonserver import find_tritonserver

    if importlib.util.find_spec("model_analyzer") is None:
        raise MissingDependencyError(
            "Model Analyzer is not installed: pip install 'gendeploy[tune]' (make setup does)"
        )
    perf_analyzer = find_perf_analyzer()
    if perf_analyzer is None:
        raise MissingDependencyError(
            "perf_analyzer not found: run scripts/get_perf_analyzer.sh (make setup does), or "
            "set GENDEPLOY_PERF_ANALYZER"
        )
    return find_tritonserver(options.tritonserver), perf_analyzer


def _model_config(repo: Path, model: str) -> Any:
    path = repo / model / "config.pbtxt"
    if not path.is_file():
        known = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
        raise UsageError(f"no model {model!r} in {repo} (models: {', '.join(known) or 'none'})")
    config = parse_config(path.read_text())
    if config.backend != "python":
        raise TuneError(
            f"{model} runs on Triton's {config.platform or config.backend} backend, which the "
            f"tritonserver here lacks: tune its python-backend sibling, or run Model Analyzer "
            f"in the NGC container"
        )
    kinds = {group.kind for group in config.instance_group}
    if any(kind != config.instance_group[0].KIND_CPU for kind in kinds):
        raise TuneError(
            f"{model} has GPU instances: tune measures on this machine's CPU; write its repo "
            f"with `gendeploy repo --cpu` to tune it here"
        )
    return config


def input_data(config: Any, rows: int = 16) -> dict[str, Any]:
    """perf_analyzer's ``--input-data`` for the python model: seeds (the server draws z) and, for
    a conditional model, labels in range (random ones would be refused)."""
    names = {i.name for i in config.input}
    classes = int(config.parameters["num_classes"].string_value or 0)
    latent = int(config.parameters["latent_dim"].string_value or 0)
    data = []
    for i in range(rows):
        step: dict[str, Any] = {}
        if "seed" in names:
            step["seed"] = {"content": [i], "shape": [1]}
        elif "z" in names:
            from gendeploy.serve.backend_model import draw_latents

            step["z"] = {"content": draw_latents([i], latent)[0].tolist(), "shape": [latent]}
        if "labels" in names:
            step["labels"] = {"content": [i % max(classes, 1)], "shape": [1]}
        data.append(step)
    return {"data": data}


def prepare_repo(repo: Path, model: str, work: Path) -> Path:
    """A private repository with only ``model`` and its latest version (linked, not copied)."""
    prepared = work / "models"
    if prepared.exists():
        shutil.rmtree(prepared)
    (prepared / model).mkdir(parents=True)
    shutil.copyfile(repo / model / "config.pbtxt", prepared / model / "config.pbtxt")
    (prepared / model / "1").symlink_to(latest_version(repo / model).resolve())
    return prepared


def measure_baseline(version_dir: Path, config: Any) -> Baseline:
    """In-process batch-1 throughput of the same ONNX file with ONNX Runtime's own threads."""
    from gendeploy.bench.sweep import make_feeds
    from gendeploy.bench.timing import StabilityRule, measure
    from gendeploy.runtime.onnxrt import OnnxRuntimeRunner

    onnx_file = config.parameters["onnx_file"].string_value or "model.onnx"
    feeds = make_feeds(
        1,
        int(config.parameters["latent_dim"].string_value),
        int(config.parameters["num_classes"].string_value or 0),
    )
    with OnnxRuntimeRunner(version_dir / onnx_file) as runner:
        m = measure(lambda: runner.run(feeds), StabilityRule(window_s=1.0))
    return Baseline(round(m.calls_per_s, 2), round(m.percentile_ms(50), 4), m.stable)


def _versions(perf_analyzer: Path) -> dict[str, str]:
    from gendeploy.bench.served import perf_analyzer_version

    versions = {"perf_analyzer": perf_analyzer_version(perf_analyzer)}
    for name, dist in (
        ("model_analyzer", "triton-model-analyzer"),
        ("tritonserver", "nvidia-pytriton"),
    ):
        try:
            versions[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "?"
    versions["tritonserver"] = f"2.51.0 (nvidia-pytriton {versions['tritonserver']})"
    return versions


def tune(
    repo: Path, options: TuneOptions, out: Path, say: Callable[[str], None] = print
) -> TuneReport:
    """Search, choose, write the winner as a new version of ``options.model``, report in ``out``."""
    from gendeploy.bench.machine import BusyMeter, load_average
    from gendeploy.serve.admin import new_key
    from gendeploy.serve.server import free_port

    if not repo.is_dir():
        raise UsageError(f"model repository {repo} does not exist; run `gendeploy repo EXPORT_DIR`")
    config = _model_config(repo, options.model)
    binary, perf_analyzer = _require_tools(options)
    started, meter = time.monotonic(), BusyMeter()
    start = candidate_from_config(config, options.space.protocols[0])
    space = options.space.capped(int(config.max_batch_size))
    if options.search is SearchMode.quick:  # the climb starts there: it must be on the ladders
        space = space.including(start)
    if options.search is SearchMode.exhaustive and space.size() > options.max_configs:
        raise UsageError(
            f"the exhaustive search has {space.size()} configurations, over --max-configs "
            f"{options.max_configs}: narrow the axes (--instances, --threads, ...) or raise it"
        )
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    work.chmod(0o700)
    (work / "input.json").write_text(json.dumps(input_data(config)))
    baseline = None
    if options.baseline:
        say("timing in-process batch 1 (ONNX Runtime) for the baseline")
        baseline = measure_baseline(latest_version(repo / options.model), config)
    constraints = Constraints(options.p99_budget_ms, options.min_throughput)
    goal = Goal(options.objective, constraints)
    run = AnalyzerRun(
        work=work,
        model=options.model,
        repo=prepare_repo(repo, options.model, work),
        input_data=work / "input.json",
        perf_analyzer=perf_analyzer,
        tritonserver=binary,
        ports=(free_port(), free_port(), free_port()),
        admin_key=new_key(),
        shm_prefix=f"gendeploy_tune_{os.getpid()}_{secrets.token_hex(4)}_",
        instance_kind="KIND_CPU",
        concurrencies=options.concurrencies,
        objective=options.objective,
        constraints=constraints,
        window_ms=options.window_ms,
        stability_pct=options.stability_pct,
        max_trials=options.max_trials,
    )
    trials = Trials()

    def measure(block: Block) -> None:
        wanted = block.candidates()
        say(f"Model Analyzer: {len(wanted)} configuration(s) over {block.protocol.value}")
        problems = run.profile(block, say)
        found: dict[Candidate, list[Measurement]] = {}
        for m in read_measurements(run.workspace(block.protocol), options.model, block.protocol):
            found.setdefault(m.candidate, []).append(m)
        for c, ms in found.items():
            if c not in trials.measurements:
                trials.order.append(c)
            trials.measurements[c] = ms
        for c in wanted:
            if c not in found:
                trials.failed[c] = problems[-1] if problems else "no measurement recorded"
                trials.order.append(c)

    say(f"{options.search.value} search of {options.model} in {repo} (work: {work})")
    if options.search is SearchMode.quick:
        quick_search(space, start, goal, trials, measure, options.max_configs, say)
    else:
        exhaustive_search(space, trials, measure)
    for protocol in space.protocols:  # Model Analyzer's own outputs: big copies of the model
        shutil.rmtree(run.workspace(protocol) / "output_models", ignore_errors=True)
    all_ms = trials.all()
    if not all_ms:
        raise TuneError(f"nothing was measured; see the Model Analyzer logs under {work}")
    winner = goal.best(all_ms)
    report = TuneReport(
        model=options.model,
        repo=str(repo),
        search=options.search.value,
        objective=options.objective.value,
        p99_budget_ms=options.p99_budget_ms,
        min_throughput=options.min_throughput,
        concurrencies=list(options.concurrencies),
        start=start.to_dict(),
        measurements=[measurement_row(m, goal.feasible(m)) for m in all_ms],
        failed=[
            {"candidate": c.to_dict(), "why": why}
            for c, why in trials.failed.items()
            if c not in trials.measurements
        ],
        winner=measurement_row(winner, True) if winner else None,
        baseline=baseline.__dict__ if baseline else None,
        command=command_line(repo, options),
        versions=_versions(perf_analyzer),
    )
    own = trials.measurements.get(start)
    if own:
        report.start_best = measurement_row(
            max(own, key=goal.key), goal.feasible(max(own, key=goal.key))
        )
    if winner and options.write:
        same = _serving(winner.candidate) == _serving(start)
        if same:
            say("the repository's own configuration won: no new version written")
        else:
            summary = {"schema_version": 1, "winner": report.winner, "command": report.command}
            written = write_tuned_version(
                repo, options.model, winner.candidate, summary, options.keep_versions
            )
            report.written = f"{written.path}/{written.version}"
    report.elapsed_s = round(time.monotonic() - started, 1)
    share = meter.other_share()
    report.machine = {"other_share": share, "load_average": load_average(), "cores": os.cpu_count()}
    report.contended = share > CONTENDED
    write_report(report, out)
    return report


def _serving(c: Candidate) -> tuple[int, ...]:
    """What a config.pbtxt holds of a candidate (the protocol is the clients' choice)."""
    return (c.instances, c.threads, c.max_batch_size, c.queue_delay_us, c.preferred_batch)
