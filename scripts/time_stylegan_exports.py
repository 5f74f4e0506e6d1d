"""Time issue 20's two export targets (a benchmark, not a test) and write the record to bench/.

    python scripts/time_stylegan_exports.py [--out bench/stylegan_export] [--only sg3_t|sg2ada]

Each target is one ``gendeploy export --fp16 --int8`` of a generator from
``tests/nvlabs_like.py`` (written for this project with NVlabs' constructs at the issue's sizes;
NVlabs' own code is not used): StyleGAN3-T 16x16 (channel_base 1024, channel_max 32, 10 classes,
target under 5 minutes) and StyleGAN2-ADA 32x32 (channel_base 2048, channel_max 64, 10 classes,
target under 2 minutes), both with ``noise_mode=const``, in a fresh process each. Recorded per
target: wall time, the child's max RSS, exit status and last line, what was published or refused,
the manifest's per-step timings; for the machine: CPU model, cores, the load average sampled every
5 s during each run, and the versions. The targets are for a quiet machine: the share of CPU time
that processes other than the export took during each run says how quiet this one was.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gendeploy.bench.machine import BusyMeter

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "nvlabs_like.py"
TARGETS = {
    "sg3_t": {
        "what": "StyleGAN3-T-like 16x16, channel_base 1024, channel_max 32, 10 classes",
        "target_s": 300,
        "args": ["--image-shape", "3,16,16"],
    },
    "sg2ada": {
        "what": "StyleGAN2-ADA-like 32x32, channel_base 2048, channel_max 64, 10 classes",
        "target_s": 120,
        "args": ["--image-shape", "3,32,32"],
    },
}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("torch", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            module = __import__(name)
            found[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            found[name] = "not installed"
    return found


def run_target(name: str, spec: dict, work: Path) -> dict:
    out = work / name
    command = [
        sys.executable, "-c", "from gendeploy.cli import main; main()", "export",
        "--model", f"{MODELS}:{name}", "--latent-dim", "64", "--num-classes", "10",
        *spec["args"], "--forward-kwargs", "noise_mode=const", "--max-batch", "64",
        "--fp16", "--int8", "--out", str(out),
    ]  # fmt: skip
    loads: list[float] = [load_average()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(5.0):
            loads.append(load_average())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    meter = BusyMeter()
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    other_share = meter.other_share()
    done.set()
    sampler.join()
    lines = result.stderr.strip().splitlines() + result.stdout.strip().splitlines()
    record: dict = {
        "what": spec["what"],
        "command": "gendeploy " + " ".join(command[3:]).replace(str(ROOT) + "/", ""),
        "target_s": spec["target_s"],
        "wall_s": round(wall, 1),
        "met": result.returncode == 0 and wall < spec["target_s"],
        "exit_status": result.returncode,
        "last_line": (result.stderr.strip().splitlines() or [""])[-1],
        "other_processes_share": other_share,  # of all cores' time, by processes not ours
        "load_avg_1min": {
            "min": min(loads),
            "max": max(loads),
            "mean": round(sum(loads) / len(loads), 2),
        },
        "log": lines[-40:],
    }
    manifest = out / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        record["published"] = [a["name"] for a in data["artifacts"]]
        record["refused"] = [s for s in data.get("skipped", []) if "stage" in s]
        record["timings_s"] = data.get("timings", {})
        for artifact in data["artifacts"]:
            quality = (artifact.get("validation") or {}).get("quality")
            if quality:
                record.setdefault("quality_seeds", {})[artifact["name"]] = quality.get("seeds")
    return record


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# StyleGAN export timings (issue 20's targets)",
        "",
        f"Measured {report['date']} by `scripts/time_stylegan_exports.py`, one run per target.",
        f"Machine: {machine['cpu']}, {machine['cores']} cores. {machine['note']}".strip(),
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.",
        "",
        "| target | goal | wall | exit | published | refused | other processes | load avg 1 min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["targets"].items():
        refused = ", ".join(s["name"] for s in r.get("refused", [])) or "-"
        load = r["load_avg_1min"]
        lines.append(
            f"| {name}: {r['what']} | < {r['target_s']} s | {r['wall_s']} s | {r['exit_status']} "
            f"| {', '.join(r.get('published', [])) or '-'} | {refused} "
            f"| {r['other_processes_share']:.0%} "
            f"| {load['min']}-{load['max']} (mean {load['mean']}) |"
        )
    lines += ["", "Where the time goes (the manifest's `timings`, seconds):", ""]
    for name, r in report["targets"].items():
        timings = ", ".join(f"{k} {v}" for k, v in r.get("timings_s", {}).items())
        lines.append(f"- **{name}**: {timings or 'no manifest (nothing published)'}")
        if r.get("quality_seeds"):
            lines.append(f"  quality gate seeds per set: {r['quality_seeds']}")
        if r.get("refused"):
            for s in r["refused"]:
                lines.append(f"  refused {s['name']} at {s['stage']}: {s['reason'][:300]}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "stylegan_export")
    parser.add_argument("--only", choices=sorted(TARGETS), action="append")
    parser.add_argument(
        "--note",
        default="",
        help="anything to say about the machine ('other processes' is measured)",
    )
    args = parser.parse_args()
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "note": args.note},
        "versions": versions(),
        "targets": {},
    }
    with tempfile.TemporaryDirectory(prefix="gendeploy-timing-") as work:
        for name in args.only or list(TARGETS):
            print(f"exporting {name} ...", flush=True)
            report["targets"][name] = record = run_target(name, TARGETS[name], Path(work))
            print(f"  {record['wall_s']} s, exit {record['exit_status']}: {record['last_line']}")
    report["max_rss_children_mb"] = round(
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
