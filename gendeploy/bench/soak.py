"""A soak: the served model under steady load for minutes, watching for failures and for memory
that keeps growing.

The export is served by a real tritonserver (python backend, as `gendeploy serve` runs it);
perf_analyzer (or, where it is missing, the tritonclient load loop) drives it at a fixed
concurrency in back-to-back samples, each a few measurement windows long. Meanwhile the resident
memory of tritonserver and of each python-backend stub is read once a second. Failed requests
come from the server's own statistics (every model's ``fail`` count), not from the client.

Targets (``SoakOptions``): no failed request, and memory after warm-up flat within
``max_growth`` (the median of the last ``tail_s`` seconds against the median of the first
``tail_s`` seconds after ``warmup_s``).
"""

from __future__ import annotations

import io
import json
import statistics
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gendeploy.bench.loadloop import load_loop
from gendeploy.bench.machine import BusyMeter, load_average, machine_info
from gendeploy.bench.results import ServedResult
from gendeploy.bench.served import (
    find_perf_analyzer,
    perf_analyzer_version,
    run_perf_analyzer,
    triton_version,
)
from gendeploy.bench.sweep import make_feeds
from gendeploy.bench.timing import StabilityRule
from gendeploy.errors import GendeployError, ServeError, UsageError
from gendeploy.fileio import atomic_write_bytes
from gendeploy.manifest import load_manifest
from gendeploy.runtime.base import Feeds
from gendeploy.serve.backend_model import REFUSED_METRIC
from gendeploy.serve.repo import RepoOptions, write_repo
from gendeploy.serve.server import TritonServer, group_members

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SoakOptions:
    duration_s: float = 300.0
    concurrency: int = 8
    window_s: float = 5.0  # perf_analyzer's measurement window; a sample is 3-6 windows
    warmup_s: float = 30.0  # memory before this is allocation, not a leak
    tail_s: float = 30.0  # memory is compared over this long at each end
    max_growth: float = 0.05
    protocol: str = "http"
    threads: int = 0  # ONNX Runtime threads per instance (0: the CPUs split among the instances)

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.window_s <= 0 or self.threads < 0:
            raise UsageError("--concurrency and --window-s must be positive, --threads >= 0")
        if self.duration_s < self.warmup_s + 2 * self.tail_s:
            raise UsageError(
                f"--duration-s {self.duration_s:.0f} leaves no room to compare memory: it must "
                f"be at least warm-up + 2 x tail = {self.warmup_s + 2 * self.tail_s:.0f} s"
            )
        if self.protocol not in ("http", "grpc"):
            raise UsageError(f"--protocol must be http or grpc, got {self.protocol!r}")


@dataclass(frozen=True)
class MemorySample:
    t_s: float
    tritonserver_mib: float
    stubs_mib: dict[int, float]  # pid -> RSS of each python-backend stub

    @property
    def total_mib(self) -> float:
        return self.tritonserver_mib + sum(self.stubs_mib.values())


@dataclass(frozen=True)
class LoadSample:
    t_s: float  # when the sample ended
    images_per_s: float
    p50_ms: float
    p99_ms: float
    tool: str
    error: str = ""  # the load generator failed during this sample
    p90_ms: float = 0.0


@dataclass
class SoakReport:
    model: str
    options: SoakOptions
    machine: dict[str, Any]
    tool: str
    triton_version: str = ""
    load: list[LoadSample] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    requests: int = 0  # requests the server answered over the soak
    failed_requests: int = 0  # of those, failed or refused (``server_counts``)
    other_share: float | None = None  # other processes' share of the CPU over the soak
    load_average_end: list[float] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def memory_growth(self) -> float:
        """Relative change of total RSS from just after warm-up to the end."""
        opts = self.options
        after = [m.total_mib for m in self.memory if m.t_s >= opts.warmup_s]
        early = [
            m.total_mib for m in self.memory if opts.warmup_s <= m.t_s < opts.warmup_s + opts.tail_s
        ]
        end = self.memory[-1].t_s if self.memory else 0.0
        late = [m.total_mib for m in self.memory if m.t_s > end - opts.tail_s]
        if not after or not early or not late:
            return float("nan")
        return statistics.median(late) / statistics.median(early) - 1.0

    def passed(self) -> bool:
        growth = self.memory_growth()
        errors = any(s.error for s in self.load)
        return self.failed_requests == 0 and not errors and growth <= self.options.max_growth

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["memory_growth"] = round(self.memory_growth(), 4)
        data["passed"] = self.passed()
        for sample, raw in zip(self.memory, data["memory"], strict=True):
            raw["total_mib"] = round(sample.total_mib, 1)
        return data


class _MemoryWatch:
    """Reads the RSS of tritonserver and its stubs (its process group) once a second."""

    def __init__(self, server: TritonServer, start: float) -> None:
        self.server, self.start = server, start
        self.samples: list[MemorySample] = []
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _MemoryWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        import psutil

        while not self.halt.wait(1.0):
            process = self.server.process
            if process is None:
                continue
            try:
                server_rss = psutil.Process(process.pid).memory_info().rss
                stubs = {}
                for pid in group_members(process.pid):
                    if pid != process.pid:
                        stubs[pid] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
            except psutil.Error:
                continue  # a process ended between the listing and the reading
            t = round(time.monotonic() - self.start, 2)
            self.samples.append(MemorySample(t, round(server_rss / 2**20, 1), stubs))


def soak(export_dir: Path, out: Path, options: SoakOptions, say: Any = print) -> SoakReport:
    """Soak the export's python-backend model; writes soak.json, soak.md and soak.png in ``out``."""
    manifest = load_manifest(export_dir)
    exe = find_perf_analyzer()
    tool = f"perf_analyzer ({perf_analyzer_version(exe)})" if exe else "tritonclient load loop"
    report = SoakReport(manifest.name, options, machine_info(), tool)
    meter = BusyMeter()
    work = out / "soak-work"
    repo = work / "triton_repo"
    write_repo(export_dir, repo, RepoOptions(intra_op_threads=options.threads))
    feeds = make_feeds(1, manifest.latent_dim, manifest.num_classes, seed=2)
    with TritonServer(repo, log_path=work / "tritonserver.log") as server:
        report.triton_version = triton_version(server.http_url)
        url = server.http_url if options.protocol == "http" else server.grpc_url
        before = server_counts(server)
        start = time.monotonic()
        with _MemoryWatch(server, start) as watch:
            while time.monotonic() - start < options.duration_s:
                sample = _one_sample(exe, url, manifest.name, options, feeds, start)
                report.load.append(sample)
                say(
                    f"  {sample.t_s:6.0f}s  {sample.images_per_s:8.1f} img/s  p99 "
                    f"{sample.p99_ms:7.2f} ms  {sample.error}"
                )
        report.memory = watch.samples
        after = server_counts(server)
        report.requests = after[0] - before[0]
        report.failed_requests = after[1] - before[1]
    report.other_share = meter.other_share()
    report.load_average_end = load_average()
    write_report(report, out)
    return report


def _one_sample(
    exe: Path | None, url: str, model: str, options: SoakOptions, feeds: Feeds, start: float
) -> LoadSample:
    # a loose rule: a soak records drift, it does not wait it out (perf_analyzer 2.49 wants
    # more than 3 trials allowed to call 3 windows stable)
    rule = StabilityRule(window_s=options.window_s, windows=3, tolerance=0.99, max_windows=6)
    try:
        if exe is not None:
            window_ms = round(options.window_s * 1000)
            result = run_perf_analyzer(
                exe, url, model, options.protocol, options.concurrency, feeds, window_ms, rule
            )
        else:
            result = load_loop(url, model, options.protocol, options.concurrency, feeds, rule)
    except (GendeployError, OSError) as e:
        return LoadSample(round(time.monotonic() - start, 1), 0.0, 0.0, 0.0, "", str(e)[:200])
    return _sample(result, start)


def _sample(result: ServedResult, start: float) -> LoadSample:
    return LoadSample(
        round(time.monotonic() - start, 1),
        result.images_per_s,
        result.p50_ms,
        result.p99_ms,
        result.tool,
        p90_ms=result.p90_ms,
    )


def server_counts(server: TritonServer, timeout_s: float = 10.0) -> tuple[int, int]:
    """(requests, failed requests) over every model, as the server saw them: Triton's statistics
    (an open API) count what failed in Triton or the backend, and gendeploy's python model
    counts, in a metric of its own, the requests it refused (Triton counts those as successes).

    Triton updates its statistics after it sends the response, so the count is read until two
    reads a moment apart agree (or ``timeout_s`` passes)."""
    counts = _counts_now(server)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.3)
        counts, last = _counts_now(server), counts
        if counts == last:
            break
    return counts


def _counts_now(server: TritonServer) -> tuple[int, int]:
    client = server.admin_client()
    try:
        stats = client.get_inference_statistics()
    except Exception as e:  # tritonclient raises its own exception or a socket error
        raise ServeError(f"cannot read the server's statistics: {e}") from None
    finally:
        client.close()
    requests = failures = 0
    for model in stats.get("model_stats", []):
        success = int(model.get("inference_stats", {}).get("success", {}).get("count", 0))
        failed = int(model.get("inference_stats", {}).get("fail", {}).get("count", 0))
        requests += success + failed
        failures += failed
    return requests, failures + refused_requests(server.metrics_url)


def refused_requests(metrics_url: str) -> int:
    """The sum of ``gendeploy_refused_requests_total`` over models (Prometheus text format)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            text = response.read().decode()
    except OSError as e:
        raise ServeError(f"cannot read the server's metrics at {metrics_url}: {e}") from None
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(REFUSED_METRIC + "{")
    )


def write_report(report: SoakReport, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "soak.json", (json.dumps(report.to_dict(), indent=2) + "\n").encode())
    atomic_write_bytes(out / "soak.md", markdown(report).encode())
    plot(report, out / "soak.png")


def markdown(report: SoakReport) -> str:
    opts, cpu = report.options, report.machine.get("cpu", {})
    growth = report.memory_growth()
    load = [s for s in report.load if not s.error]
    lines = [
        f"# Soak: {report.model}",
        "",
        f"{'PASSED' if report.passed() else 'FAILED'}: {report.failed_requests} failed of "
        f"{report.requests} requests; memory {growth:+.1%} after warm-up "
        f"(target <= {opts.max_growth:.0%}).",
        "",
        f"- Load: {report.tool}, concurrency {opts.concurrency}, batch 1, {opts.protocol}, "
        f"{opts.duration_s:.0f} s in samples of 3-6 windows of {opts.window_s:.0f} s",
        f"- Server: tritonserver {report.triton_version} (python backend, ONNX Runtime, "
        + (f"{opts.threads} threads" if opts.threads else "the CPUs split among its instances")
        + "), model control none, management locked",
        f"- Machine: {cpu.get('model', '?')}, {report.machine.get('logical_cores')} logical "
        f"cores, {report.machine.get('memory_gib')} GiB"
        + (
            f"; other processes took {report.other_share:.0%} of the CPU during the soak (load "
            f"average {report.machine.get('load_average_1m_5m_15m')} at the start, "
            f"{report.load_average_end} at the end)"
            if report.other_share is not None
            else ""
        ),
        f"- Memory: median RSS of tritonserver + stubs over {opts.tail_s:.0f} s right after a "
        f"{opts.warmup_s:.0f} s warm-up against the last {opts.tail_s:.0f} s",
        "",
        "| throughput (img/s) | p99 (ms) | p99 / p90 within a sample |",
        "|---|---|---|",
    ]
    if load:
        rates = [s.images_per_s for s in load]
        p99 = [s.p99_ms for s in load]
        tails = [s.p99_ms / s.p90_ms for s in load if s.p90_ms > 0]
        tail = f"median {statistics.median(tails):.2f} / max {max(tails):.2f}" if tails else "-"
        lines.append(
            f"| min {min(rates):.1f} / median {statistics.median(rates):.1f} / max "
            f"{max(rates):.1f} | median {statistics.median(p99):.2f} / max {max(p99):.2f} "
            f"| {tail} |"
        )
    errors = [s for s in report.load if s.error]
    lines += ["", f"Load generator errors: {len(errors)}"]
    lines += [f"- at {s.t_s:.0f} s: {s.error}" for s in errors[:10]]
    lines += ["", "![memory and throughput over time](soak.png)", ""]
    return "\n".join(lines)


def plot(report: SoakReport, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (mem, rate) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    t = [m.t_s for m in report.memory]
    mem.plot(t, [m.tritonserver_mib for m in report.memory], label="tritonserver")
    mem.plot(t, [sum(m.stubs_mib.values()) for m in report.memory], label="python stubs")
    mem.plot(t, [m.total_mib for m in report.memory], label="total", linewidth=2)
    mem.axvline(report.options.warmup_s, color="grey", linestyle=":", label="end of warm-up")
    mem.set_ylabel("RSS (MiB)")
    mem.legend(loc="lower right")
    mem.set_title(f"Soak of {report.model}: {report.machine.get('cpu', {}).get('model', '')}")
    load = [s for s in report.load if not s.error]
    rate.plot([s.t_s for s in load], [s.images_per_s for s in load], marker="o", label="img/s")
    rate.set_ylabel("images/s")
    rate.set_xlabel("seconds")
    p99 = rate.twinx()
    p99.plot([s.t_s for s in load], [s.p99_ms for s in load], color="tab:red", marker=".")
    p99.set_ylabel("p99 (ms)", color="tab:red")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
