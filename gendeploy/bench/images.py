"""The image-to-image bench (issue 19): megapixels per second in and out of an image export.

Every runner of the registry that can run the export (eager, torch.compile, ONNX Runtime,
OpenVINO, INT8 by OpenVINO and by ONNX Runtime) at a small and a large input (64 x 64 and
256 x 256 by default), beside eager in the same run, each with the precision it executed, its
GFLOP/s as a share of the matmul peak of that precision (measured at the start and the end of
the run, INT8 included), its peak memory and its quality: PSNR and worst level of its rendered
output against eager FP32. The served figure: the same images sent whole (UINT8) to the export's
python models on a real tritonserver on loopback, tiled there. JSON and Markdown are written
atomically (``write_report``).

``python -m gendeploy.bench.images --export exports/digits-sr4x --out bench/images``
(``make bench-images``).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gendeploy.bench import machine, peak
from gendeploy.bench.flops import count_flops
from gendeploy.bench.sweep import peak_rss_mib
from gendeploy.bench.timing import StabilityRule, measure
from gendeploy.cpus import available_cpus
from gendeploy.errors import GendeployError, UsageError
from gendeploy.fileio import atomic_write_bytes
from gendeploy.manifest import INPUT_IMAGES, load_manifest
from gendeploy.runtime.registry import RunnerContext, RunnerUnavailable, build_runner
from gendeploy.runtime.triton import TritonRunner
from gendeploy.serve.repo import RepoOptions, write_repo
from gendeploy.serve.server import TritonServer
from gendeploy.testimages import synthetic_images
from gendeploy.tiling import render, to_model

RUNNERS = (
    "eager",
    "eager_bf16",
    "torch_compile",
    "onnxruntime",
    "openvino",
    "openvino_int8",
    "onnxruntime_int8",
)
SIZES = (64, 256)
SCHEMA_VERSION = 1
Say = Callable[[str], None]


@dataclass
class ImageRow:
    runner: str
    precision: str  # what the engine executed
    size: int  # input side (square)
    batch: int
    p50_ms: float
    mpix_in_per_s: float
    mpix_out_per_s: float
    speedup: float  # over eager at the same size, same run
    gflops: float
    peak_dtype: str  # the matmul peak it is a share of (``peak.peak_for``)
    peak_share: float
    psnr_db: float  # rendered uint8 against eager FP32's (inf: identical)
    max_level_diff: int
    peak_rss_mib: float
    stable: bool


@dataclass
class ImageBenchReport:
    export: str
    scale: int
    in_channels: int
    threads: int
    machine: dict[str, Any]
    peaks: dict[str, dict[str, Any]] = field(default_factory=dict)  # dtype -> gflops, by, each
    rows: list[ImageRow] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # runner, reason
    served: list[dict[str, Any]] = field(default_factory=list)  # model, protocol, size, mp/s
    load_average: list[float] = field(default_factory=list)  # at the end
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _inputs(test_set: str, channels: int, size: int, batch: int) -> np.ndarray:
    """uint8 NHWC test images: digit scans for a digits model, else synthetic ones."""
    if test_set == "digits":
        from gendeploy.export.image_gate import digits_mosaics

        return digits_mosaics(size, size, channels, batch, seed=0, blur=1.0)
    return synthetic_images(batch, size, size, channels, first_seed=0)


def _peaks(threads: int) -> dict[str, peak.Peak]:
    return {d: peak.matmul_peak(d, threads=threads) for d in peak.peak_dtypes()}


def run_image_bench(
    export_dir: Path,
    sizes: tuple[int, ...] = SIZES,
    batch: int = 1,
    runners: tuple[str, ...] = RUNNERS,
    threads: int | None = None,
    rule: StabilityRule | None = None,
    served: bool = True,
    say: Say = print,
) -> ImageBenchReport:
    from gendeploy.export.source import load_eager

    manifest = load_manifest(export_dir)
    image = manifest.image
    if image is None:
        raise UsageError(f"{export_dir} is not an image-to-image export (no 'image' manifest)")
    threads = threads or available_cpus()
    torch.set_num_threads(threads)
    rule = rule or StabilityRule(window_s=0.5, max_windows=8)
    module = load_eager(manifest).eval()
    report = ImageBenchReport(manifest.name, image.scale, image.in_channels, threads, {})
    report.machine = machine.machine_info()
    say(f"image bench {manifest.name}: {threads} threads; measuring the matmul peaks")
    start = _peaks(threads)
    ctx = RunnerContext(manifest, export_dir, module, threads)
    for size in sizes:
        pixels = _inputs(image.test_set, image.in_channels, size, batch)
        x = to_model(pixels)
        flops = count_flops(module, (torch.from_numpy(x),))
        with torch.inference_mode():
            reference = render(module(torch.from_numpy(x)).numpy())
        eager_ms = 0.0
        for name in runners:
            row = _bench_runner(name, ctx, x, reference, size, batch, flops, rule, say, report)
            if row is None:
                continue
            if name == "eager":
                eager_ms = row.p50_ms
            row.speedup = round(eager_ms / row.p50_ms, 3) if eager_ms else 0.0
            report.rows.append(row)
    end = _peaks(threads)
    for d in start:
        best = max(start[d], end[d], key=lambda p: p.gflops)
        report.peaks[d] = {
            "gflops": best.gflops,
            "by": best.by,
            "start": start[d].each,
            "end": end[d].each,
        }
    by_dtype = {d: float(v["gflops"]) for d, v in report.peaks.items()}
    for row in report.rows:
        row.peak_dtype, own = peak.peak_for(row.precision, by_dtype)
        row.peak_share = round(row.gflops / own, 4) if own else 0.0
    if served:
        report.served = _served(export_dir, image.test_set, image.in_channels, sizes, threads, say)
    report.load_average = machine.load_average()
    return report


def _bench_runner(
    name: str,
    ctx: RunnerContext,
    x: np.ndarray,
    reference: np.ndarray,
    size: int,
    batch: int,
    flops: int,
    rule: StabilityRule,
    say: Say,
    report: ImageBenchReport,
) -> ImageRow | None:
    try:
        runner = build_runner(name, ctx)
    except RunnerUnavailable as e:
        if not any(s["runner"] == name for s in report.skipped):
            report.skipped.append({"runner": name, "reason": str(e)})
        return None
    feeds = {INPUT_IMAGES: x}
    try:
        out = runner.run(feeds)  # also the warm-up of torch.compile
        rendered = render(out)
        memory = peak_rss_mib(lambda: runner.run(feeds))
        measured = measure(lambda: runner.run(feeds), rule, time.perf_counter)
    except (GendeployError, RuntimeError) as e:
        report.skipped.append({"runner": f"{name} at {size}", "reason": " ".join(str(e).split())})
        return None
    finally:
        runner.close()
    p50_s = measured.percentile_ms(50) / 1e3
    diff = np.abs(rendered.astype(np.int16) - reference)
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    psnr = 10 * math.log10(255**2 / mse) if mse else math.inf
    s = ctx.manifest.image.scale if ctx.manifest.image else 1
    row = ImageRow(
        runner=name,
        precision=runner.precision,
        size=size,
        batch=batch,
        p50_ms=round(p50_s * 1e3, 4),
        mpix_in_per_s=round(batch * size * size / p50_s / 1e6, 5),
        mpix_out_per_s=round(batch * (s * size) ** 2 / p50_s / 1e6, 4),
        speedup=0.0,
        gflops=round(flops / p50_s / 1e9, 2),
        peak_dtype="fp32",
        peak_share=0.0,
        psnr_db=round(psnr, 2),
        max_level_diff=int(diff.max()),
        peak_rss_mib=round(memory, 1),
        stable=measured.stable,
    )
    say(f"  {name:18s} {size:4d}px  {row.p50_ms:9.2f} ms  {row.mpix_in_per_s:8.3f} MP/s in")
    return row


def _served(
    export_dir: Path, test_set: str, channels: int, sizes: tuple[int, ...], threads: int, say: Say
) -> list[dict[str, Any]]:
    """The python models of the export on a real tritonserver: megapixels per second of whole
    images sent as UINT8 over HTTP (one request at a time), tiled on the server, its engine on
    the bench's ``threads``."""

    rows: list[dict[str, Any]] = []
    served_rule = StabilityRule(window_s=0.5, max_windows=6)
    with tempfile.TemporaryDirectory(prefix="gendeploy-bench-images-") as tmp:
        # no queue limit: with one, requests of the pinned Triton waited out a 500 ms timer
        options = RepoOptions(queue_delay_us=0, max_queue_size=0, intra_op_threads=threads)
        written = write_repo(export_dir, Path(tmp) / "repo", options)
        server = TritonServer(Path(tmp) / "repo", log_path=Path(tmp) / "tritonserver.log")
        server.start()
        try:
            for model in (m.name for m in written):
                if model.endswith(("_onnx", "_openvino", "_trt")):
                    continue  # NGC-only backends: not in the pip tritonserver
                for size in sizes:
                    pixels = _inputs(test_set, channels, size, 1)
                    with TritonRunner(server.http_url, model) as runner:
                        m = measure(_call(runner, {"image": pixels}), served_rule)
                    p50_s = m.percentile_ms(50) / 1e3
                    rows.append(
                        {
                            "model": model,
                            "protocol": "http",
                            "size": size,
                            "p50_ms": round(p50_s * 1e3, 3),
                            "mpix_in_per_s": round(size * size / p50_s / 1e6, 3),
                        }
                    )
                    say(f"  served {model:16s} {size:4d}px  {rows[-1]['p50_ms']:9.2f} ms")
        finally:
            server.stop()
    return rows


def _call(runner: Any, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: runner.run(feeds)


def markdown(report: ImageBenchReport) -> str:
    """The report as Markdown: one table per input size, the served figures, the peaks."""
    m = report.machine
    cpu = m.get("cpu", {})
    out = [
        f"# Image-to-image bench: `{report.export}` (x{report.scale}, {report.in_channels} "
        "channel(s))",
        "",
        f"- Machine: {cpu.get('model', '?')}, {report.threads} threads; load average at the "
        f"end {report.load_average}",
        "- Matmul peaks in this run (2048^2, best library, max of start and end): "
        + ", ".join(f"{d} {v['gflops']:.1f} GFLOP/s ({v['by']})" for d, v in report.peaks.items()),
        "- MP/s: megapixels per second of input and of output; PSNR and worst level: rendered "
        "uint8 output against eager FP32's; share: GFLOP/s over the peak of the precision run",
        "",
    ]
    head = "| runner | precision | p50 ms | MP/s in | MP/s out | x eager | GFLOP/s | share of peak"
    head += " | PSNR to FP32 dB | worst level | peak RSS MiB |"
    for size in sorted({r.size for r in report.rows}):
        s = size * report.scale
        out += [f"## {size} x {size} in, {s} x {s} out (batch 1)", "", head, "|---" * 11 + "|"]
        for r in (r for r in report.rows if r.size == size):
            psnr = "identical" if math.isinf(r.psnr_db) else f"{r.psnr_db:.2f}"
            out.append(
                f"| {r.runner} | {r.precision} | {r.p50_ms:.2f} | {r.mpix_in_per_s:.3f} | "
                f"{r.mpix_out_per_s:.2f} | {r.speedup:.2f} | {r.gflops:.1f} | "
                f"{r.peak_share:.0%} ({r.peak_dtype}) | {psnr} | {r.max_level_diff} | "
                f"{r.peak_rss_mib:.0f} |"
            )
        out.append("")
    if report.served:
        out += [
            "## Served (tritonserver on loopback, python backend, HTTP, one request at a time)",
            "",
            "| model | size | p50 ms | MP/s in | MP/s out |",
            "|---|---|---|---|---|",
        ]
        for row in report.served:
            mp_out = row["mpix_in_per_s"] * report.scale**2
            out.append(
                f"| {row['model']} | {row['size']} | {row['p50_ms']:.2f} | "
                f"{row['mpix_in_per_s']:.3f} | {mp_out:.2f} |"
            )
        out.append("")
    if report.skipped:
        out += ["Skipped (with the reason):", ""]
        out += [f"- `{s['runner']}`: {s['reason']}" for s in report.skipped]
        out.append("")
    return "\n".join(out)


def write_report(report: ImageBenchReport, out: Path) -> tuple[Path, Path]:
    """``image_bench.json`` and ``image_bench.md`` under ``out``, each whole or not at all."""
    paths = out / "image_bench.json", out / "image_bench.md"
    text = json.dumps(report.to_dict(), indent=2, default=str) + "\n"
    atomic_write_bytes(paths[0], text.replace("Infinity", '"inf"').encode())
    atomic_write_bytes(paths[1], markdown(report).encode())
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", type=Path, required=True, help="an image-to-image export")
    parser.add_argument("--out", type=Path, default=Path("bench/images"))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--window-s", type=float, default=0.5)
    parser.add_argument("--no-served", action="store_true")
    args = parser.parse_args(argv)
    report = run_image_bench(
        args.export,
        tuple(args.sizes),
        threads=args.threads or None,
        rule=StabilityRule(window_s=args.window_s, max_windows=8),
        served=not args.no_served,
    )
    for path in write_report(report, args.out):
        print(path)


if __name__ == "__main__":
    main()
