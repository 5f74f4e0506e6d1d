"""``bench.md``: the report people read, rendered from the ``BenchReport`` alone."""

from __future__ import annotations

from typing import Any

from pytablewriter import MarkdownTableWriter
from pytablewriter.typehint import String

from gendeploy.bench.machine import BUSY
from gendeploy.bench.results import BenchReport, ModelReport, RunnerQuality, Unjudged


def _disturbed(report: BenchReport) -> bool:
    if report.busy.disturbed is not None:
        return report.busy.disturbed
    return (report.busy.other_processes_cpu_share or 0.0) > BUSY


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table; a '|' inside a cell is escaped, so it stays in its cell."""
    writer = MarkdownTableWriter(
        headers=header,
        value_matrix=[[str(x) for x in row] for row in rows],
        type_hints=[String] * len(header),  # cells are already formatted: print them as they are
        margin=1,
    )
    return [*writer.dumps().rstrip("\n").split("\n"), ""]


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def _met(value: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not judged"}[value]


def quality_text(model: ModelReport, runner: str) -> str:
    """The quality column: the gate's Frechet ratio (label accuracy for digits models)."""
    if runner == "eager":
        return "reference"
    q = model.quality.get(runner)
    if q is None:
        return ""
    if isinstance(q, Unjudged):
        return "not judged"
    text = f"{q.frechet_ratio:.3f}" + ("" if q.passed else " **failed**")
    if q.digits is not None and q.digits.label_accuracy is not None:
        text += f" ({q.digits.label_accuracy:.2%} labels)"
    return text


def summary_table(model: ModelReport) -> list[str]:
    """Runner x batch: images/s and the speed-up over eager in the same run, quality beside."""
    batches = sorted({c.batch for c in model.cells})
    runners = list(dict.fromkeys(c.runner for c in model.cells))
    by = {(c.runner, c.batch): c for c in model.cells}
    rows = []
    for r in runners:
        first = by.get((r, batches[0]))
        row: list[Any] = [f"`{r}`", first.precision if first else ""]
        for b in batches:
            c = by.get((r, b))
            row.append(f"{_fmt(c.images_per_s)} (x{c.speedup:.2f})" if c else "")
        row.append(quality_text(model, r))
        rows.append(row)
    header = ["runner", "precision (executed)", *[f"batch {b}: img/s (x eager)" for b in batches]]
    return _table([*header, "quality: Frechet ratio (max 1.10)"], rows)


def quality_section(model: ModelReport) -> list[str]:
    """Every runner's quality figures: per-seed PSNR, the distribution gate, the digits score."""
    quality = model.quality
    if not quality:
        return []
    rows = []
    for runner, q in quality.items():
        if isinstance(q, Unjudged):
            rows.append([f"`{runner}`", "", "", "", "", "", q.error])
            continue
        digits, fp32 = q.digits, q.digits_fp32
        score = ""
        if digits and fp32:
            acc, acc32 = digits.label_accuracy, fp32.label_accuracy
            score = (f"{acc:.2%} vs {acc32:.2%}, " if acc is not None else "") + (
                f"{digits.frechet_ratio:.3f} vs {fp32.frechet_ratio:.3f}"
            )
        rows.append(
            [
                f"`{runner}`",
                q.precision,
                f"{q.psnr.min_db} / {q.psnr.p1_db} / {q.psnr.median_db}",
                f"{q.frechet_ratio:.3f}",
                score,
                "yes" if q.passed else "**NO**",
                "; ".join(q.failures),
            ]
        )
    any_q = next((q for q in quality.values() if isinstance(q, RunnerQuality)), None)
    seeds = f"{any_q.seeds} seeds, {any_q.feature_space} features" if any_q else ""
    out = [
        "### Quality: what each runner draws, against eager FP32 (the export's quality gate)",
        "",
        f"Per-seed PSNR of the uint8 renderings, and the Frechet ratio (runner vs FP32 on disjoint"
        f" seed sets, over FP32's own distance between them; 1.0 = FP32's noise). {seeds}.",
        "",
    ]
    header = ["runner", "gated as", "PSNR min / p1 / median dB", "Frechet ratio"]
    header += ["digits: labels, ratio to real (runner vs FP32)", "passed", "why not"]
    out += _table(header, rows)
    floats = model.export.float_layers
    out += [f"- `{a}` kept in floating point by the INT8 fallback: {layers}" for a, layers in
            floats.items()]  # fmt: skip
    return [*out, ""] if floats else out


MATRIX_FLAGS = {
    "AMX (int8, bf16 tiles)": ("amx_tile", "amx_int8", "amx_bf16"),
    "AVX-512 VNNI (int8 dot products)": ("avx512_vnni",),
    "AVX-VNNI": ("avx_vnni",),
    "AVX-512 bf16": ("avx512_bf16",),
}


def matrix_line(flags: list[str]) -> str:
    """Which matrix / dot-product extensions the CPU has: what INT8 and bf16 can run on."""
    have = set(flags)
    parts = [
        f"{name}: {'yes' if all(f in have for f in need) else 'no'}"
        for name, need in MATRIX_FLAGS.items()
    ]
    return "- Matrix extensions: " + "; ".join(parts)


def machine_lines(report: BenchReport) -> list[str]:
    m, busy = report.machine, report.busy
    cpu = m["cpu"]
    gpus = ", ".join(g["name"] for g in m.get("gpus", [])) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    share = busy.other_processes_cpu_share
    lines = [
        f"- CPU: {cpu['model']}, {m['physical_cores']} physical / {m['logical_cores']} logical"
        f" cores, {m['memory_gib']} GiB; flags: {' '.join(cpu['flags'])}",
        matrix_line(cpu["flags"]),
        f"- GPU: {gpus}",
        f"- Threads: {report.threads} (torch intra-op, ONNX Runtime intra-op, OpenVINO,"
        " Triton's ONNX Runtime), pinned for the whole run",
        f"- Load average at start {m['load_average_1m_5m_15m']}, at end "
        f"{busy.load_average_end or '?'}; CPU taken by other processes: "
        + (
            f"{report.busy_before:.0%} in the second before the run, "
            if report.busy_before is not None
            else ""
        )
        + "during the run: "
        + (f"{share:.0%} of the machine" if share is not None else "not recorded")
        + (
            " (**they needed the cores the runners used: figures are disturbed**)"
            if _disturbed(report)
            else ""
        ),
        f"- Versions: {versions}",
    ]
    peaks = report.peaks
    if peaks:
        lines.append(
            "- Matmul peak measured in this run (2048^2 matmul, fastest call of the best GEMM"
            " library, at the start and the end): "
            + ", ".join(f"{k} {v.gflops:.1f} GFLOP/s ({v.by})" for k, v in peaks.items())
        )
    return lines


def render_markdown(report: BenchReport) -> str:
    rule = report.rule
    out = [
        f"# gendeploy bench: suite `{report.suite}`",
        "",
        f"Run {report.started} in {report.duration_s:.0f} s with `{report.command}`.",
        f"Each cell: warm-up, then windows of {rule.window_s} s until {rule.stable_windows}"
        f" consecutive windows agree within {rule.tolerance:.0%} (cap {rule.max_windows}"
        " windows), runners timed in alternation. Speed-ups and max |diff| are against eager FP32"
        " from the same run.",
        "",
        "## Machine",
        "",
        *machine_lines(report),
        "",
    ]
    if report.goals:
        out += ["## Goals (ratios from this run)", ""]
        share = report.busy.other_processes_cpu_share or 0.0
        if _disturbed(report):
            out += [
                f"> **Other processes took {share:.0%} of this machine's CPU time during the run:"
                " these ratios are not trustworthy.** Eager PyTorch (OpenMP) suffers most from"
                " contention on 2 cores, which inflates every speed-up over it. Re-run `make bench`"
                " on a quiet machine.",
                "",
            ]
        rows = [
            [
                g.goal,
                g.target,
                "" if g.measured is None else g.measured,
                g.by,
                _met(g.met),
                g.detail,
            ]
            for g in report.goals
        ]
        out += _table(["goal", "target", "measured", "by", "result", "how"], rows)
    for model in report.models:
        out += model_section(model)
    return "\n".join(out).rstrip() + "\n"


def _architecture(cfg: dict[str, Any]) -> str:
    """A trainer config's architecture and width, or a user model's image shape and latent."""
    if "arch" in cfg:
        size = cfg["image_size"]
        return f"{cfg['arch']} {cfg['image_channels']}x{size}x{size}, width {cfg['width']}"
    c, h, w = cfg["image_shape"]
    return f"{c}x{h}x{w}, latent {cfg['latent_dim']}"


UNTRAINED = [
    "**Untrained weights**: the quality column compares each runner with this random-weight"
    " generator's own FP32 (what the precision changes); it says nothing of a trained model's"
    " quality, and no quality goal is judged on it.",
    "",
]


def model_section(model: ModelReport) -> list[str]:
    name = model.name
    out = [
        f"## `{name}`",
        "",
        f"{_architecture(model.config)}, {model.config['num_classes']} classes; weights:"
        f" {model.source}; {model.flops_per_image / 1e6:.1f} MFLOP per image (2 per"
        " multiply-add).",
        "",
        *(UNTRAINED if model.trained is False else []),
        *summary_table(model),
        f"![throughput]({name}_throughput.png) ![latency]({name}_latency.png)"
        f" ![speed vs quality]({name}_quality.png)",
        "",
        "<details><summary>Every cell</summary>",
        "",
    ]
    header = [
        "runner",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "img/s",
        "GFLOP/s",
        "% FP32 peak",
        "x eager",
        "max abs diff",
        "peak RSS MiB",
        "stable (windows)",
    ]
    rows = [
        [
            c.runner,
            c.batch,
            _fmt(c.p50_ms, 3),
            _fmt(c.p90_ms, 3),
            _fmt(c.p99_ms, 3),
            _fmt(c.images_per_s),
            _fmt(c.gflops),
            f"{c.peak_fraction:.0%}",
            f"{c.speedup:.2f}",
            f"{c.max_abs_diff:.2g}",
            _fmt(c.peak_rss_mib, 0),
            f"{'yes' if c.stable else 'NO'} ({c.windows})",
        ]
        for c in model.cells
    ]
    out += [*_table(header, rows), "</details>", ""]
    if model.skipped:
        out += ["Skipped here (with the reason):", ""]
        out += _table(["runner", "reason"], [[f"`{s.runner}`", s.reason] for s in model.skipped])
    out += quality_section(model)
    out += served_section(model)
    out += profile_section(model)
    return out


def served_section(model: ModelReport) -> list[str]:
    served = model.served
    if not served:
        return []
    out = [f"### Served through Triton: {served.model}", ""]
    if served.skipped:
        return [*out, f"Not measured: {served.skipped}", ""]
    delay = "?" if served.queue_delay_us is None else served.queue_delay_us
    out.append(
        f"Triton {served.triton_version or '?'}, load from {served.tool}"
        + (f" ({served.perf_analyzer_version})" if served.perf_analyzer_version else "")
        + f"; batch 1 per request; {served.instances} model instance(s); dynamic batching delay"
        + f" {delay} us."
        + " Served output vs eager: max abs diff "
        + ", ".join(f"{k} {v:.2g}" for k, v in served.max_abs_diff.items())
        + "."
    )
    out.append("")
    rows = [
        [
            r.protocol,
            r.concurrency,
            _fmt(r.images_per_s),
            _fmt(r.p50_ms, 3),
            _fmt(r.p90_ms, 3),
            _fmt(r.p99_ms, 3),
            _parts(r.breakdown_ms),
            "yes" if r.stable else "NO",
            r.tool + (f" ({r.note})" if r.note else ""),
        ]
        for r in served.results
    ]
    header = ["protocol", "concurrency", "img/s", "p50 ms", "p90 ms", "p99 ms"]
    header += ["mean: queue / compute / rest ms", "stable", "measured by"]
    out += _table(header, rows)
    out += [f"![served]({model.name}_served.png)", ""]
    out += [f"- {e}" for e in served.errors]
    return out


def _parts(parts: dict[str, float]) -> str:
    """perf_analyzer's mean latency split: server queue, server compute, everything else."""
    if not parts:
        return ""
    queue = parts.get("Server Queue", 0.0)
    compute = sum(v for k, v in parts.items() if k.startswith("Server Compute"))
    rest = sum(parts.values()) - queue - compute
    return f"{queue:.2f} / {compute:.2f} / {rest:.2f}"


def profile_section(model: ModelReport) -> list[str]:
    profiles = model.profile
    if not profiles:
        return []
    out = ["### Where the time goes", ""]
    rows = [
        [
            p.runner,
            p.batch,
            _fmt(p.ms_per_call, 2),
            ", ".join(f"{o.op} {o.share:.0%}" for o in p.ops[:4]),
            ", ".join(f"{o.op} {o.share:.0%}" for o in p.nodes[:5]),
        ]
        for p in profiles
    ]
    header = ["runner", "batch", "profiled ms/call", "top ops (share of op time)", "top nodes"]
    out += _table(header, rows)
    for lp in model.layers:
        total = sum(r.ms for r in lp.layers) or 1.0
        out += [f"Eager, per layer, batch {lp.batch} (forward hooks):", ""]
        rows = [
            [r.layer, r.shape, _fmt(r.mflop), _fmt(r.ms, 3), f"{r.ms / total:.0%}",
             _fmt(r.gflops)]
            for r in lp.layers
        ]  # fmt: skip
        out += _table(["layer", "in -> out", "MFLOP", "ms", "share", "GFLOP/s"], rows)
    return out
