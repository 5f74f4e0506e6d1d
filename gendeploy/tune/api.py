"""``tune(repo, TuneOptions(model=...))``: search the served configuration of one model on the
real server, choose under the user's budget, write the winner as a new version, report.

    prepare (a private one-model repository, perf_analyzer's input data, the baseline)
    -> search (quick or exhaustive; every measurement by Model Analyzer, tune.analyzer)
    -> choose (tune.search.Goal) -> write (tune.version) -> report (tune.report)

Every run measures afresh: its work folder (``<out>/work``, Model Analyzer's checkpoints among
it) starts empty, and an ``--out`` that holds an earlier run is refused unless ``force``.
"""

from __future__ import annotations

import contextlib
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

from gendeploy.bench.machine import BusyMeter, load_average
from gendeploy.bench.sweep import make_feeds
from gendeploy.bench.timing import StabilityRule, measure
from gendeploy.errors import MissingDependencyError, TuneError, UsageError
from gendeploy.manifest import MANIFEST_NAME, load_manifest
from gendeploy.runtime.onnxrt import OnnxRuntimeRunner
from gendeploy.seeds import draw_latents
from gendeploy.serve.admin import new_key
from gendeploy.serve.repo import config_text, parse_config
from gendeploy.serve.server import free_port
from gendeploy.serve.tritonserver import find_tritonserver
from gendeploy.tune.analyzer import (
    MODEL_ANALYZER_VERSION,
    AnalyzerRun,
    Constraints,
    Measurement,
    read_measurements,
    server_version,
)
from gendeploy.tune.report import (
    REPORT_FILES,
    Baseline,
    Failed,
    Measured,
    TuneReport,
    write_report,
)
from gendeploy.tune.search import Goal, Trials, exhaustive_search, quick_search
from gendeploy.tune.space import (
    Block,
    Candidate,
    Objective,
    Protocol,
    SearchMode,
    SearchSpace,
    candidate_from_config,
)
from gendeploy.tune.version import latest_version, plan_tuned, write_tuned

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


def command_line(repo: Path, o: TuneOptions, out: Path | None = None) -> str:
    """The ``gendeploy tune`` command that reproduces a run with these options (into ``out``)."""

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
        "--keep-versions", str(o.keep_versions),
    ]  # fmt: skip
    if out is not None:
        args += ["--out", str(out)]
    if o.tritonserver is not None:
        args += ["--tritonserver", str(o.tritonserver)]
    if not o.baseline:
        args.append("--no-baseline")
    if not o.write:
        args.append("--dry-run")
    return shlex.join(args)


def _require_tools(options: TuneOptions) -> tuple[Any, Path]:
    from gendeploy.bench.served import PERF_ANALYZER_ENV, find_perf_analyzer

    if importlib.util.find_spec("model_analyzer") is None:
        raise MissingDependencyError(
            "Model Analyzer is not installed: pip install 'gendeploy[tune]' (make setup does)"
        )
    try:
        installed = importlib.metadata.version("triton-model-analyzer")
    except importlib.metadata.PackageNotFoundError:
        installed = "an unknown version"
    if installed != MODEL_ANALYZER_VERSION:
        raise MissingDependencyError(
            f"Model Analyzer {installed} is installed; gendeploy tune reads the checkpoint of "
            f"and keys the client of {MODEL_ANALYZER_VERSION}: "
            f"pip install 'triton-model-analyzer=={MODEL_ANALYZER_VERSION}'"
        )
    explicit = os.environ.get(PERF_ANALYZER_ENV)
    if explicit and not Path(explicit).is_file():
        raise MissingDependencyError(
            f"{PERF_ANALYZER_ENV}={explicit} is not a file: point it at perf_analyzer, or unset "
            "it to use the one scripts/get_perf_analyzer.sh fetches"
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
            step["z"] = {"content": draw_latents([i], latent)[0].tolist(), "shape": [latent]}
        if "labels" in names:
            step["labels"] = {"content": [i % max(classes, 1)], "shape": [1]}
        data.append(step)
    return {"data": data}


def export_max_batch(version_dir: Path, config: Any) -> int:
    """The largest batch the export serves: its manifest's batch profile (and the TensorRT
    engine's profile, where there is one), not whatever the current config happens to allow."""

    path = version_dir / MANIFEST_NAME
    if not path.is_file():  # a repository not written by gendeploy: its config is all we know
        return int(config.max_batch_size)
    manifest = load_manifest(path)
    limits = [manifest.batch.max]
    for artifact in manifest.artifacts:
        profile = (artifact.extra or {}).get("profile") or {}
        if artifact.kind.value == "tensorrt" and profile.get("max"):
            limits.append(int(profile["max"]))
    return min(limits)


def prepare_repo(repo: Path, model: str, work: Path) -> Path:
    """A private repository with only ``model`` and its latest version (linked, not copied).

    Its config has no preferred batch size: Model Analyzer merges a variant's settings into the
    base config key by key, so a variant asking for none would keep the base's."""
    prepared = work / "models"
    if prepared.exists():
        shutil.rmtree(prepared)
    (prepared / model).mkdir(parents=True)
    config = parse_config((repo / model / "config.pbtxt").read_text())
    del config.dynamic_batching.preferred_batch_size[:]
    (prepared / model / "config.pbtxt").write_text(config_text(config))
    (prepared / model / "1").symlink_to(latest_version(repo / model).resolve())
    return prepared


def measure_baseline(version_dir: Path, config: Any) -> Baseline:
    """In-process batch-1 throughput of the same ONNX file with ONNX Runtime's own threads."""

    onnx_file = config.parameters["onnx_file"].string_value or "model.onnx"
    feeds = make_feeds(
        1,
        int(config.parameters["latent_dim"].string_value),
        int(config.parameters["num_classes"].string_value or 0),
    )
    with OnnxRuntimeRunner(version_dir / onnx_file) as runner:
        m = measure(lambda: runner.run(feeds), StabilityRule(window_s=1.0))
    return Baseline(round(m.calls_per_s, 2), round(m.percentile_ms(50), 4), m.stable)


def _versions(perf_analyzer: Path, run: AnalyzerRun, binary: Any) -> dict[str, str]:
    from gendeploy.bench.served import perf_analyzer_version

    versions = {
        "perf_analyzer": perf_analyzer_version(perf_analyzer),
        "model_analyzer": importlib.metadata.version("triton-model-analyzer"),
    }
    reported = next(
        (v for p in Protocol if (v := server_version(run.workspace(p))) is not None), None
    )
    server = reported or "? (no server log)"
    if binary.origin == "nvidia-pytriton":
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            server += f" (nvidia-pytriton {importlib.metadata.version('nvidia-pytriton')})"
    versions["tritonserver"] = server
    return versions


def check_out(out: Path, force: bool) -> None:
    """``out`` may take this run: empty or absent, or ``force`` to replace an earlier run."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: choose a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(
            f"{out} is not empty (an earlier tuning run?): pass --force to replace its report "
            "and work folder, or choose another --out"
        )


def fresh_work(out: Path) -> Path:
    """``out/work``, new and private: an earlier run's (its Model Analyzer checkpoints, whose
    measurements Model Analyzer would hand back as this run's) and its report are removed."""
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)
    work.mkdir(parents=True, mode=0o700)
    work.chmod(0o700)
    return work


def tune(
    repo: Path,
    options: TuneOptions,
    out: Path,
    say: Callable[[str], None] = print,
    force: bool = False,
) -> TuneReport:
    """Search, choose, write the winner as a new version of ``options.model`` and of its NGC
    siblings, report in ``out`` (refused if it holds an earlier run, unless ``force``)."""
    repo, out = repo.absolute(), out.absolute()  # Model Analyzer runs in the work folder
    if not repo.is_dir():
        raise UsageError(f"model repository {repo} does not exist; run `gendeploy repo EXPORT_DIR`")
    config = _model_config(repo, options.model)
    start = candidate_from_config(config, options.space.protocols[0])
    space = options.space.capped(export_max_batch(latest_version(repo / options.model), config))
    if options.search is SearchMode.quick:  # the climb starts there: it must be on the ladders
        space = space.including(start)
    if options.search is SearchMode.exhaustive and space.size() > options.max_configs:
        raise UsageError(
            f"the exhaustive search has {space.size()} configurations, over --max-configs "
            f"{options.max_configs}: narrow the axes (--instances, --threads, ...) or raise it"
        )
    check_out(out, force)
    binary, perf_analyzer = _require_tools(options)
    started, meter = time.monotonic(), BusyMeter()
    work = fresh_work(out)
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
    try:
        if options.search is SearchMode.quick:
            quick_search(space, start, goal, trials, measure, options.max_configs, say)
        else:
            exhaustive_search(space, trials, measure)
    finally:  # Model Analyzer's own outputs: big copies of the model, whatever happened
        for protocol in Protocol:
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
        start=start,
        measurements=[Measured(m, goal.feasible(m)) for m in all_ms],
        failed=[Failed(c, why) for c, why in trials.failed.items() if c not in trials.measurements],
        winner=Measured(winner, True) if winner else None,
        baseline=baseline,
        command=command_line(repo, options, out),
        versions=_versions(perf_analyzer, run, binary),
    )
    own = trials.measurements.get(start)
    if own:
        best_own = max(own, key=goal.key)
        report.start_best = Measured(best_own, goal.feasible(best_own))
    if winner:
        _write_winner(repo, options, winner.candidate, report, say)
    report.elapsed_s = round(time.monotonic() - started, 1)
    share = meter.other_share()
    report.machine = {"other_share": share, "load_average": load_average(), "cores": os.cpu_count()}
    report.contended = share > CONTENDED
    write_report(report, out)
    return report


def _write_winner(
    repo: Path,
    options: TuneOptions,
    winner: Candidate,
    report: TuneReport,
    say: Callable[[str], None],
) -> None:
    """The winner on the tuned model and its NGC siblings: new versions (unless a dry run),
    and in the report what was written and what could not be carried over."""
    tuned = plan_tuned(repo, options.model, winner)
    report.notes = [note for t in tuned for note in t.notes]
    changed = [t.model for t in tuned if t.changed]
    if not changed:
        say("the repository's own configuration won: no new version written")
        return
    if not options.write:
        report.notes.append(f"dry run: not written to {', '.join(changed)}")
        return
    won = report.winner.to_dict() if report.winner else None
    summary = {"schema_version": 1, "winner": won, "command": report.command}
    written = write_tuned(repo, tuned, summary, options.keep_versions)
    report.written = [f"{w.path}/{w.version}" for w in written]
