"""``run_bench``: one suite, end to end, in one process, written as one report.

For each model: a checkpoint (the trainer's, or random weights for a speed-only architecture) is
exported through ``gendeploy.export`` (gated like any export), every runner is built from that
export, the batch sweep times them in alternation, and the served sweep puts the export behind a
real tritonserver. The matmul peaks are measured at the start and the end of the same run.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from gendeploy import cpus
from gendeploy.bench import machine, peak
from gendeploy.bench.flops import flops_per_image
from gendeploy.bench.quality import runner_quality
from gendeploy.bench.report import write_report
from gendeploy.bench.results import (
    BenchReport,
    Busy,
    CellResult,
    ExportSummary,
    ModelReport,
    PeakRecord,
    RuleRecord,
    Skipped,
)
from gendeploy.bench.suites import BenchModel, Suite
from gendeploy.bench.sweep import sweep_batch
from gendeploy.errors import UnscorableError, UsageError
from gendeploy.export.int8 import int8_tools_missing
from gendeploy.manifest import Precision
from gendeploy.runtime.base import Runner
from gendeploy.runtime.inputs import WithDefaults
from gendeploy.runtime.registry import (
    RunnerContext,
    RunnerUnavailable,
    build_runner,
    describe,
    get_entry,
)

Log = Callable[[str], None]


def run_bench(
    suite: Suite, out: Path, work_dir: Path | None = None, log: Log | None = None
) -> BenchReport:
    """Run ``suite`` and write ``out``/bench.json, bench.md and the plots; returns the report."""

    say = log or (lambda _msg: None)
    threads = suite.threads or cpus.available_cpus()
    torch.set_num_threads(threads)
    started, meter = time.monotonic(), machine.BusyMeter()
    report = BenchReport(
        suite=suite.name,
        command=shlex.join(["gendeploy", *sys.argv[1:]]),
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=machine.machine_info(),
        threads=threads,
        rule=RuleRecord(
            window_s=suite.rule.window_s,
            stable_windows=suite.rule.windows,
            tolerance=suite.rule.tolerance,
            max_windows=suite.rule.max_windows,
            served_window_ms=suite.served_window_ms,
            served_max_windows=suite.served_max_windows,
        ),
        runners=describe(),
        targets=suite.goals,
    )
    before = _other_share_now()
    report.busy_before = before
    cores = report.machine["logical_cores"] or 1
    if machine.contended(before, threads, cores):
        say(
            f"warning: other processes are using {before:.0%} of the CPU right now; eager PyTorch"
            f" with {threads} OpenMP threads slows down badly under contention (see the report)"
        )
    say(f"bench suite {suite.name!r}: {threads} threads; measuring the matmul peak")
    peaks_start = _peaks(threads)
    with tempfile.TemporaryDirectory(prefix="gendeploy-bench-") as tmp:
        work = work_dir or Path(tmp)
        models = [bench_model(m, suite, work, threads, say) for m in suite.models]
    peaks_end = _peaks(threads)
    report.peaks = {
        k: PeakRecord(
            gflops=max(peaks_start[k].gflops, peaks_end[k].gflops),
            by=max((peaks_start[k], peaks_end[k]), key=lambda p: p.gflops).by,
            start=peaks_start[k].each,
            end=peaks_end[k].each,
        )
        for k in peaks_start
    }
    fp32_peak = report.peaks["fp32"].gflops
    by_dtype = {k: v.gflops for k, v in report.peaks.items()}
    for m in models:  # fractions of the best peaks seen in the whole run
        for c in m.cells:
            c.peak_fraction = round(c.gflops / fp32_peak, 4) if fp32_peak else 0.0
            c.peak_dtype, own = peak.peak_for(c.precision, by_dtype)
            c.precision_peak_fraction = round(c.gflops / own, 4) if own else 0.0
    report.models = models
    served = [m.served for m in models if m.served is not None and m.served.triton_version]
    if served:
        report.machine["versions"]["tritonserver"] = served[0].triton_version
        report.machine["versions"]["perf_analyzer"] = (
            served[0].perf_analyzer_version or served[0].perf_analyzer
        )
    report.duration_s = round(time.monotonic() - started, 1)
    share = meter.other_share()
    report.busy = Busy(
        other_processes_cpu_share=share,
        disturbed=machine.contended(share, threads, cores),
        load_average_end=machine.load_average(),
    )
    write_report(report, out)
    if report.busy.disturbed:
        say(
            f"warning: other processes took {share:.0%} of the CPU during the run: ratios disturbed"
        )
    say(f"wrote {out}/bench.json, bench.md and plots in {report.duration_s:.0f}s")
    return report


def _other_share_now(seconds: float = 1.0) -> float:
    """Other processes' share of the CPU over the next ``seconds`` (this process is idle)."""
    meter = machine.BusyMeter()
    time.sleep(seconds)
    return meter.other_share()


def _peaks(threads: int) -> dict[str, peak.Peak]:
    return {d: peak.matmul_peak(d, threads=threads) for d in peak.peak_dtypes()}


def prepare_checkpoint(model: BenchModel, work: Path) -> tuple[Path, str]:
    """The checkpoint to export and where it came from (the trainer's, or seeded random weights)."""
    from gendeploy.trainer.checkpoint import Checkpoint, save_checkpoint
    from gendeploy.trainer.models import build_generator, init_weights

    if model.checkpoint is not None and trained_weights(model):
        return model.checkpoint, str(model.checkpoint)
    torch.manual_seed(0)
    generator = build_generator(model.config)
    generator.apply(init_weights)
    path = work / model.name / "checkpoint.pt"
    save_checkpoint(Checkpoint(model.config, 0, generator.state_dict()), path)
    return path, "random weights (seed 0): speed does not depend on training"


def trained_weights(model: BenchModel) -> bool:
    """The bench runs ``model`` with trained weights (its checkpoint exists), not random ones:
    only then do its quality figures say anything about a trained model."""
    return model.user_model is None and model.checkpoint is not None and model.checkpoint.is_file()


def prepare_spec(model: BenchModel, work: Path) -> tuple[Any, str]:
    """The ``ModelSpec`` to export and where its weights came from."""
    from gendeploy.export.options import ModelSpec

    user = model.user_model
    if user is None:
        checkpoint, origin = prepare_checkpoint(model, work)
        return ModelSpec(checkpoint=checkpoint), origin
    from safetensors.torch import save_file

    from gendeploy.export.source import build_user_model

    if not user.path().is_file():
        raise UsageError(f"{model.name}: {user.path()} not found (bench it from a checkout)")
    spec = f"{user.path()}:{user.spec.rpartition(':')[2]}"
    torch.manual_seed(0)
    module, _, _ = build_user_model(  # its seeded initialisation, saved as the weights file
        spec, None, user.latent_dim, user.num_classes, user.image_shape, random_weights=True
    )
    weights = work / model.name / "weights.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(module.state_dict(), str(weights))
    return (
        ModelSpec(
            model=spec,
            weights=weights,
            latent_dim=user.latent_dim,
            num_classes=user.num_classes,
            image_shape=user.image_shape,
            forward_kwargs=dict(user.forward_kwargs) or None,
        ),
        f"{user.spec}, random weights (seed 0): speed does not depend on training",
    )


def bench_model(
    model: BenchModel,
    suite: Suite,
    work: Path,
    threads: int,
    say: Log,
) -> ModelReport:
    from gendeploy.export.api import export
    from gendeploy.export.options import ExportOptions
    from gendeploy.export.source import load_eager

    spec, origin = prepare_spec(model, work)
    export_dir = work / "exports" / model.name
    say(f"[{model.name}] exporting {origin}")
    int8_missing = int8_tools_missing()
    if int8_missing:
        say(f"[{model.name}] no INT8 export: {int8_missing}")
    # INT8 only when an INT8 runner is benched (the export's slowest step: NNCF and its gate);
    # INT8 the quality gate refuses is skipped by the export itself (a partial result): the
    # bench benches the rest with the export's decision and its reason, never a second export
    wants_int8 = any(name.endswith("int8") for name in suite.runners)
    options = ExportOptions(
        fp16=torch.cuda.is_available(),
        int8=wants_int8 and not int8_missing,
        max_batch=max(suite.batches),
    )

    def export_with(options: ExportOptions) -> Any:
        return export(
            spec,
            options,
            name=model.name,
            out=export_dir,
            force=True,
            command="gendeploy bench (export step)",
            log=lambda msg: say(f"[{model.name}] {msg}"),
        )

    try:
        manifest = export_with(options)
    except UnscorableError as e:  # no noise floor: no reduced precision can be judged
        if not (options.int8 or options.fp16):
            raise
        int8_missing = f"the quality gate cannot score this model ({e})"
        say(f"[{model.name}] {int8_missing}; exporting FP32 only")
        manifest = export_with(replace(options, int8=False, fp16=False))
    refused = next((s["reason"] for s in manifest.skipped if s["name"] == "int8"), None)
    if refused is not None:
        int8_missing = f"the quality gate refused INT8 for this model ({refused})"
        say(f"[{model.name}] {int8_missing}; benching the rest")
    module = load_eager(manifest)
    flops = flops_per_image(module, manifest.latent_dim, manifest.num_classes)
    runners: dict[str, Runner] = {}
    skipped: list[Skipped] = []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    context = RunnerContext(manifest, export_dir, module, threads, device)
    for name in suite.runners:
        try:
            built = build_runner(name, context)
        except RunnerUnavailable as e:
            int8_runner = get_entry(name).precision is Precision.int8
            reason = int8_missing if int8_missing and int8_runner else str(e)
            skipped.append(Skipped(name, reason))
            say(f"[{model.name}] skipped {name}: {reason}")
            continue
        # truncation and noise inputs, if any, as a request leaving them out gets them
        runners[name] = WithDefaults(built, manifest.interface)
    if "eager" not in runners:
        from gendeploy.runtime.eager import EagerRunner

        runners = {"eager": EagerRunner(module, threads=threads), **runners}
    cells: list[CellResult] = []
    failed: dict[str, str] = {}
    try:
        for batch in suite.batches:
            cells += sweep_batch(
                runners,
                batch,
                manifest.latent_dim,
                manifest.num_classes,
                flops,
                suite.rule,
                log=say,
                failed=failed,
            )
        say(f"[{model.name}] quality: what each runner draws vs eager FP32 (the export's gate)")
        judged = {name: r for name, r in runners.items() if name not in failed}
        quality = runner_quality(judged, manifest, module, say)
    finally:
        for r in runners.values():
            r.close()
    for name, reason in failed.items():
        skipped.append(Skipped(name, reason))
        say(f"[{model.name}] dropped {name}: {reason}")
    result = ModelReport(
        name=model.name,
        config=manifest.source.model_config or model.config.to_dict(),
        source=origin,
        trained=trained_weights(model),
        goals_model=model.goals,
        quality_goals_model=model.quality_goals,
        flops_per_image=flops,
        export=ExportSummary(
            artifacts=[a.name for a in manifest.artifacts],
            skipped=manifest.skipped,
            timings_s=getattr(manifest, "timings", {}),
            float_layers={
                a.name: a.extra["float_layers"]
                for a in manifest.artifacts
                if a.extra.get("float_layers")
            },
        ),
        cells=cells,
        quality=quality,
        skipped=skipped,
    )
    if suite.served:
        from gendeploy.bench.served import served_sweep

        result.served = served_sweep(manifest, export_dir, work, suite, threads, module, say)
    if suite.profile and model.goals:
        from gendeploy.bench.profile import layer_profile, profile_eager, profile_onnxruntime

        # batch 1 and 64, or the largest the export takes (a bench of --batches 1 exports max 1)
        profiled = sorted({1, min(64, manifest.batch.max)})
        say(f"[{model.name}] profiling eager and ONNX Runtime at batch {profiled}")
        fp32 = export_dir / manifest.artifact("fp32").path
        dims = (manifest.latent_dim, manifest.num_classes)
        result.profile = [profile_eager(module, *dims, b) for b in profiled] + [
            profile_onnxruntime(fp32, *dims, b, threads) for b in profiled
        ]
        result.layers = [layer_profile(module, *dims, b) for b in profiled]
    return result
