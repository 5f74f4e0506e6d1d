"""Training and export beside a co-tenant, in one run: quiet, then with one busy process.

    python -m gendeploy.bench.cotenant --out bench/cotenant      (make bench-cotenant)

Each phase runs the real CLI in a subprocess: ``gendeploy train`` of the default preset (steps/s
over the steps after warm-up, from its metrics.jsonl) and ``gendeploy export --fp16 --int8`` of
the checkpoint it wrote (wall time). Each runs with the default thread count, which adapts to
the co-tenant (``gendeploy.cpus``), and with ``--threads`` pinned to the machine's CPUs (what a
fixed OpenMP pool did before). The co-tenant is one busy Python loop at normal priority, pinned
nowhere (the scheduler puts it beside us). A ``BusyMeter`` reports the CPU share other processes
took during each phase, as the bench does: the co-tenant's, and anything else's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gendeploy import cpus
from gendeploy.bench.machine import BusyMeter, machine_info
from gendeploy.fileio import atomic_write_bytes
from gendeploy.trainer.config import DEFAULT_PRESET

TARGET = 0.70  # training beside a co-tenant keeps >= 70% of its quiet steps/s (issue 17)
WARMUP_STEPS = 20
HOG = "while True: pass"


@dataclass
class Phase:
    work: str  # "train" or "export"
    neighbour: str  # "quiet" or "one busy process"
    threads: str  # "adaptive" or "pinned N"
    value: float  # steps/s (train) or seconds (export)
    other_share: float  # of all cores' time, taken by other processes during the phase
    threads_used: list[int] = field(default_factory=list)  # train: the counts its steps ran with


@dataclass
class CotenantReport:
    started: str
    command: str
    machine: dict[str, Any]
    steps: int
    phases: list[Phase] = field(default_factory=list)

    def value(self, work: str, neighbour: str, threads: str) -> float:
        return next(
            p.value
            for p in self.phases
            if (p.work, p.neighbour, p.threads) == (work, neighbour, threads)
        )


def _train_rate(run: Path) -> tuple[float, list[int]]:
    """Steps/s after warm-up, and the thread counts the steps ran with, from metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["step"] / r["steps_per_s"] for r in rows if r["steps_per_s"] > 0}
    first, last = WARMUP_STEPS, max(elapsed)
    rate = (last - first) / (elapsed[last] - elapsed[first])
    return rate, sorted({int(r["threads"]) for r in rows if "threads" in r})


def _gendeploy(*args: str) -> float:
    """Run the real CLI; its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "gendeploy", *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def _phases(work: Path, steps: int, neighbour: str, say: Any) -> list[Phase]:
    settings: dict[str, list[str]] = {"adaptive": []} | {
        f"pinned {n}": ["--threads", str(n)] for n in (cpus.available_cpus(), 1)
    }
    found: list[Phase] = []
    for label, flags in settings.items():
        run = work / f"run-{len(found)}"
        meter = BusyMeter()
        _gendeploy(
            "train", "--preset", DEFAULT_PRESET, "--steps", str(steps), "--no-eval",
            "--no-progress", "--out", str(run), "--force", *flags,
        )  # fmt: skip
        rate, used = _train_rate(run)
        found.append(Phase("train", neighbour, label, rate, meter.other_share(), used))
        say(f"{neighbour}, {label}: train {rate:.2f} steps/s (threads {used})")
        meter = BusyMeter()
        seconds = _gendeploy(
            "export", str(run / "checkpoint.pt"), "--fp16", "--int8", "--out",
            str(work / f"export-{len(found)}"), "--force", *flags,
        )  # fmt: skip
        found.append(Phase("export", neighbour, label, seconds, meter.other_share()))
        say(f"{neighbour}, {label}: export --fp16 --int8 {seconds:.1f} s")
    return found


def run_cotenant(out: Path, steps: int = 200, say: Any = print) -> CotenantReport:
    report = CotenantReport(
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=" ".join(["python -m gendeploy.bench.cotenant", *sys.argv[1:]]),
        machine=machine_info(),
        steps=steps,
    )
    with tempfile.TemporaryDirectory(prefix="gendeploy-cotenant-") as tmp:
        report.phases += _phases(Path(tmp), steps, "quiet", say)
        hog = _start_cotenant()
        try:
            report.phases += _phases(Path(tmp), steps, "one busy process", say)
        finally:
            os.kill(hog, signal.SIGKILL)
    write_report(report, out)
    return report


def _start_cotenant() -> int:
    """The busy process, started through a shell that exits at once: it is not our descendant,
    so the ``BusyMeter`` counts it as another process's work, as it would a real co-tenant."""
    shell = subprocess.run(
        ["sh", "-c", f'"$0" -c "{HOG}" >/dev/null 2>&1 & echo $!', sys.executable],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(shell.stdout.strip())


def markdown(r: CotenantReport) -> str:
    cpu = r.machine["cpu"]["model"]
    versions = r.machine["versions"]
    usable = r.machine.get("available_cpus", {}).get("usable", "?")
    lines = [
        "# Training and export beside a co-tenant",
        "",
        f"{r.started}, `{r.command}`. Machine: {cpu}, {usable} usable CPUs, "
        f"{r.machine['memory_gib']} GiB; torch {versions.get('torch')}, onnxruntime "
        f"{versions.get('onnxruntime')}, openvino {versions.get('openvino', '-')}.",
        "",
        f"`gendeploy train --preset {DEFAULT_PRESET} --steps {r.steps} --no-eval` (steps/s over "
        f"steps {WARMUP_STEPS}-{r.steps}) and `gendeploy export CHECKPOINT --fp16 --int8` (wall "
        "time), quiet and beside one busy process (a Python loop at normal priority). "
        '"Other processes" is the share of all cores\' time that processes not ours took during '
        "the phase (the co-tenant's half of 2 cores reads 50%).",
        "",
        "| work | neighbour | threads | result | other processes | thread counts used |",
        "|---|---|---|---|---|---|",
    ]
    for p in r.phases:
        value = f"{p.value:.2f} steps/s" if p.work == "train" else f"{p.value:.1f} s"
        used = ", ".join(map(str, p.threads_used)) or "-"
        lines.append(
            f"| {p.work} | {p.neighbour} | {p.threads} | {value} | {p.other_share:.0%} | {used} |"
        )
    lines += ["", "| setting | train beside / quiet | export quiet / beside |", "|---|---|---|"]
    for threads in dict.fromkeys(p.threads for p in r.phases):
        train = r.value("train", "one busy process", threads) / r.value("train", "quiet", threads)
        export = r.value("export", "quiet", threads) / r.value(
            "export", "one busy process", threads
        )
        lines.append(f"| {threads} | {train:.2f} | {export:.2f} |")
    adaptive = r.value("train", "one busy process", "adaptive") / r.value(
        "train", "quiet", "adaptive"
    )
    verdict = "met" if adaptive >= TARGET else "MISSED"
    one_core = r.value("train", "quiet", "pinned 1")
    beside = r.value("train", "one busy process", "adaptive")
    lines += [
        "",
        f"Target: training beside the co-tenant keeps >= {TARGET:.0%} of its quiet steps/s with "
        f"the same settings: {adaptive:.0%} ({verdict}).",
        "",
        f"What one core gives: 1 thread on the quiet machine trains at {one_core:.2f} steps/s, "
        f"{one_core / r.value('train', 'quiet', 'adaptive'):.0%} of the quiet adaptive rate; "
        f"beside the co-tenant the adaptive setting keeps {beside / one_core:.0%} of that.",
        "",
    ]
    return "\n".join(lines)


def write_report(report: CotenantReport, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = json.dumps(asdict(report), indent=2) + "\n"
    atomic_write_bytes(out / "cotenant.json", data.encode())
    atomic_write_bytes(out / "cotenant.md", markdown(report).encode())
    return [out / "cotenant.json", out / "cotenant.md", _plot(report, out / "cotenant.png")]


def _plot(r: CotenantReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, work, unit in ((axes[0], "train", "steps/s"), (axes[1], "export", "seconds")):
        rows = [p for p in r.phases if p.work == work]
        labels = [f"{p.threads}\n{'quiet' if p.neighbour == 'quiet' else 'beside'}" for p in rows]
        colors = ["tab:blue" if p.neighbour == "quiet" else "tab:red" for p in rows]
        ax.bar(range(len(rows)), [p.value for p in rows], color=colors)
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_title(f"{work} ({unit}); red: beside one busy process")
    fig.suptitle(f"beside one busy process: {r.machine['cpu']['model']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("bench/cotenant"))
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    report = run_cotenant(args.out, args.steps)
    print(markdown(report))


if __name__ == "__main__":
    main()
