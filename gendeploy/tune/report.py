"""The tuning report: ``tune.json`` (everything), ``tune.md`` (every configuration tried, the
winner, where its time goes, the command that reproduces it) and ``tune.png`` (throughput against
p99, the budget and the winner marked)."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gendeploy.fileio import atomic_write_bytes
from gendeploy.tune.analyzer import Measurement
from gendeploy.tune.space import Candidate

SCHEMA_VERSION = 2  # 2: written is a list (the tuned model and its NGC siblings), notes
TARGET_RATIO = 0.9  # served throughput against in-process batch 1 of the same engine
TARGET_CONCURRENCY = 4  # the level the target is stated at
REPORT_FILES = ("tune.json", "tune.md", "tune.png")


# a p99 beyond this many p90s is a tail no queueing explains: a timer, or a disturbed measurement
# (the dynamic batcher's 500 ms stall showed as p99 ~507 ms at p90 < 11 ms; docs/served-path.md)
TAIL_RATIO = 3.0


@dataclass
class Baseline:
    """In-process batch-1 ONNX Runtime on the served ONNX file, in this process."""

    images_per_s: float  # the mean of ``samples``
    p50_ms: float
    stable: bool
    threads: str = "ONNX Runtime default"
    samples: list[float] = field(default_factory=list)  # before and after the search


@dataclass(frozen=True)
class Measured:
    """One measurement as the report records it, and whether it meets the constraints."""

    measurement: Measurement
    meets: bool

    def to_dict(self) -> dict[str, Any]:
        return {**self.measurement.to_dict(), "meets": self.meets}


@dataclass(frozen=True)
class Failed:
    """A configuration that could not be measured, and why."""

    candidate: Candidate
    why: str


@dataclass
class TuneReport:
    model: str
    repo: str
    search: str
    objective: str
    p99_budget_ms: float | None
    min_throughput: float | None
    concurrencies: list[int]
    start: Candidate  # the repository's own configuration
    measurements: list[Measured] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    winner: Measured | None = None
    start_best: Measured | None = None  # the repository config's best measurement
    baseline: Baseline | None = None
    written: list[str] = field(default_factory=list)  # the new versions' directories
    notes: list[str] = field(default_factory=list)  # what the winner could not carry over
    command: str = ""
    elapsed_s: float = 0.0
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    contended: bool = False
    schema_version: int = SCHEMA_VERSION

    def ratio(self) -> float | None:
        """The winner's measurement against in-process batch 1."""
        if not (self.winner and self.baseline and self.baseline.images_per_s):
            return None
        return self.winner.measurement.throughput / self.baseline.images_per_s

    def at_concurrency(self, concurrency: int) -> Measurement | None:
        """The winning configuration's measurement at ``concurrency``, if it was measured."""
        if not self.winner:
            return None
        won = self.winner.measurement.candidate
        return next(
            (
                m.measurement
                for m in self.measurements
                if m.measurement.candidate == won and m.measurement.concurrency == concurrency
            ),
            None,
        )

    def ratio_at(self, concurrency: int) -> float | None:
        """The winning configuration at ``concurrency`` against in-process batch 1."""
        m = self.at_concurrency(concurrency)
        if not (m and self.baseline and self.baseline.images_per_s):
            return None
        return m.throughput / self.baseline.images_per_s

    def to_dict(self) -> dict[str, Any]:
        """The report as ``tune.json`` records it."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["start"] = self.start.to_dict()
        d["measurements"] = [m.to_dict() for m in self.measurements]
        d["failed"] = [{"candidate": f.candidate.to_dict(), "why": f.why} for f in self.failed]
        d["winner"] = self.winner.to_dict() if self.winner else None
        d["start_best"] = self.start_best.to_dict() if self.start_best else None
        d["baseline"] = asdict(self.baseline) if self.baseline else None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def where_time_goes(m: Measurement) -> str:
    """perf_analyzer's split of the mean latency of one measurement."""
    rest = m.avg_ms - m.queue_ms - m.compute_infer_ms - m.compute_io_ms
    parts = [
        f"queue {m.queue_ms:.2f} ms",
        f"compute {m.compute_infer_ms:.2f} ms",
        f"server input/output {m.compute_io_ms:.2f} ms",
        f"the rest (client, network, Triton's frontend) {max(rest, 0):.2f} ms",
    ]
    return f"mean latency {m.avg_ms:.2f} ms = " + " + ".join(parts)


def markdown(report: TuneReport) -> str:
    r = report
    budget = f"p99 <= {r.p99_budget_ms} ms" if r.p99_budget_ms is not None else ""
    floor = f"throughput >= {r.min_throughput} img/s" if r.min_throughput is not None else ""
    constraints = " and ".join(x for x in (budget, floor) if x) or "none"
    goal = "most images/s" if r.objective == "throughput" else "least p99 latency"
    lines = [
        f"# gendeploy tune: {r.model}",
        "",
        f"Repository `{r.repo}`; {r.search} search; objective: {goal}; constraints: "
        f"{constraints}; concurrency {', '.join(map(str, r.concurrencies))}; batch 1 per "
        f"request. {len(r.measurements)} measurements of "
        f"{len({m.measurement.candidate for m in r.measurements})} "
        f"configurations, {len(r.failed)} failed, in {r.elapsed_s:.0f} s. Measured by Model "
        f"Analyzer {r.versions.get('model_analyzer', '?')} with perf_analyzer "
        f"({r.versions.get('perf_analyzer', '?')}) on tritonserver "
        f"{r.versions.get('tritonserver', '?')}.",
        "",
    ]
    if r.contended:
        lines += [
            f"**Contended machine**: other processes took {r.machine.get('other_share', 0):.0%} "
            f"of the CPU during the run (load average {r.machine.get('load_average')}); these "
            "numbers rank configurations on this run only. Rerun on a quiet machine.",
            "",
        ]
    lines += ["## Result", ""]
    if r.winner:
        w = r.winner.measurement
        lines.append(
            f"Winner: **{w.candidate.label()}** at concurrency "
            f"{w.concurrency}: {w.throughput:.1f} img/s, p99 {w.p99_ms:.2f} ms."
        )
    else:
        lines.append("No configuration met the constraints; nothing was written.")
    if r.start_best:
        s = r.start_best.measurement
        lines.append(
            f"The repository's own configuration ({r.start.label()}): "
            f"{s.throughput:.1f} img/s, p99 {s.p99_ms:.2f} ms."
        )
    if r.baseline:
        b = r.baseline
        timed = (
            f" (mean of {' and '.join(f'{x:.1f}' for x in b.samples)}, before and after the search)"
            if len(b.samples) > 1
            else ""
        )
        lines.append(
            f"In-process batch 1 of the same engine (ONNX Runtime, {b.threads}): "
            f"{b.images_per_s:.1f} img/s{timed}{'' if b.stable else ' (not stable)'}."
        )
    lines += _ratios(r)
    if "client_share" in r.machine:
        shares = r.machine
        lines.append(
            f"CPU over the run, of the whole machine: perf_analyzer (the clients) "
            f"{shares['client_share']:.0%}, tritonserver and its python stubs "
            f"{shares['server_share']:.0%}, other processes {shares['other_share']:.0%}: the "
            "clients share the cores with the server."
        )
    if r.winner:
        lines.append(f"Where the winner's time goes: {where_time_goes(r.winner.measurement)}.")
    lines.append(
        "Written: " + ", ".join(f"`{w}`" for w in r.written) + " (new versions; the served ones "
        "are untouched)."
        if r.written
        else "Written: nothing."
    )
    lines += [f"Note: {note}." for note in r.notes]
    lines += ["", "![throughput against p99](tune.png)", "", "## Every configuration tried", ""]
    lines += [
        "| # | instances | threads | max batch | delay us | preferred | protocol | concurrency "
        "| img/s | p99 ms | p90 ms | mean ms | queue ms | compute ms | meets | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(r.measurements, 1):
        m, c = row.measurement, row.measurement.candidate
        note = []
        if r.winner and row == r.winner:
            note.append("**winner**")
        if c == r.start:
            note.append("repository config")
        if m.p90_ms and m.p99_ms > TAIL_RATIO * m.p90_ms:
            note.append(f"p99 over {TAIL_RATIO:g}x p90: a stall?")
        lines.append(
            f"| {i} | {_candidate_cells(c)} | "
            f"{m.concurrency} | {m.throughput:.1f} | {m.p99_ms:.2f} | "
            f"{m.p90_ms:.2f} | {m.avg_ms:.2f} | {m.queue_ms:.2f} | "
            f"{m.compute_infer_ms:.2f} | {'yes' if row.meets else 'no'} | "
            f"{', '.join(note)} |"
        )
    for f in r.failed:
        lines.append(
            f"| - | {_candidate_cells(f.candidate)} | | | | | | | | | failed: {f.why[:120]} |"
        )
    lines += ["", "## Reproduce", "", "```", r.command, "```", ""]
    return "\n".join(lines)


def _candidate_cells(c: Candidate) -> str:
    return (
        f"{c.instances} | {c.threads or 'auto'} | {c.max_batch_size} | {c.queue_delay_us} | "
        f"{c.preferred_batch or '-'} | {c.protocol.value}"
    )


def _ratios(r: TuneReport) -> list[str]:
    """Served / in-process at the target's concurrency and at the winner's own level."""
    if not (r.winner and r.baseline):
        return []
    target = r.ratio_at(TARGET_CONCURRENCY)
    if target is None:
        lines = [
            f"Served / in-process at concurrency {TARGET_CONCURRENCY} (the target's level): "
            f"not measured (add {TARGET_CONCURRENCY} to --concurrency)."
        ]
    else:
        met = "met" if target >= TARGET_RATIO else "missed"
        lines = [
            f"Served / in-process at concurrency {TARGET_CONCURRENCY}, the winning "
            f"configuration: **{target:.2f}x** (target >= {TARGET_RATIO}x: **{met}**)."
        ]
    ratio, level = r.ratio(), r.winner.measurement.concurrency
    if ratio is not None and level != TARGET_CONCURRENCY:
        lines.append(f"At the winner's own level (concurrency {level}): {ratio:.2f}x.")
    return lines


def plot(report: TuneReport, path: Path) -> Path:
    """Throughput against p99, one point per measurement; the budget, floor, baseline, the
    repository's configuration and the winner marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for protocol, marker in (("http", "o"), ("grpc", "^")):
        ms = [
            m.measurement
            for m in report.measurements
            if m.measurement.candidate.protocol.value == protocol
        ]
        if ms:
            ax.scatter(
                [m.p99_ms for m in ms],
                [m.throughput for m in ms],
                marker=marker,
                alpha=0.7,
                label=f"{protocol} ({len(ms)})",
            )
    if report.start_best:
        s = report.start_best.measurement
        ax.scatter(
            [s.p99_ms], [s.throughput], s=140, facecolors="none", edgecolors="k",
            marker="s", label="repository config",
        )  # fmt: skip
    if report.winner:
        w = report.winner.measurement
        ax.scatter(
            [w.p99_ms], [w.throughput], s=260, marker="*", color="crimson", zorder=5,
            label=f"winner: {w.candidate.label()}",
        )  # fmt: skip
    if report.p99_budget_ms is not None:
        ax.axvline(report.p99_budget_ms, color="crimson", ls="--", lw=1, label="p99 budget")
    if report.min_throughput is not None:
        ax.axhline(report.min_throughput, color="purple", ls="--", lw=1, label="throughput floor")
    if report.baseline:
        b = report.baseline.images_per_s
        ax.axhline(b, color="gray", ls=":", lw=1, label="in-process batch 1")
        ax.axhline(
            TARGET_RATIO * b, color="gray", ls="-.", lw=0.8, label=f"{TARGET_RATIO}x in-process"
        )
    title = f"{report.model}: every configuration tried ({report.search} search)"
    ax.set(xlabel="p99 latency (ms)", ylabel="images / s", title=title)
    if report.contended:
        ax.text(0.01, 0.01, "contended machine", transform=ax.transAxes, fontsize=8, color="gray")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_report(report: TuneReport, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in REPORT_FILES]
    atomic_write_bytes(paths[0], report.to_json().encode())
    atomic_write_bytes(paths[1], markdown(report).encode())
    plot(report, paths[2])
    return paths
