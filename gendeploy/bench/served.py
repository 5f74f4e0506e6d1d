"""The served sweep: the model behind a real tritonserver, driven at each concurrency level.

Triton's own ``perf_analyzer`` drives the load where it is found (``GENDEPLOY_PERF_ANALYZER`` or
``PATH``), with the same stability rule as the in-process sweep (``--stability-percentage 10``,
time windows, a cap on trials). It exits 0 even when it gives up on a level, so its CSV is read and
a missing row is a failure. Where it is missing, a tritonclient load loop (one connection per
concurrent client, threads) measures the same figures with :mod:`gendeploy.bench.timing`'s rule.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gendeploy.bench.timing import Measurement, StabilityRule, Window, summarize, windows_agree
from gendeploy.errors import ServeError
from gendeploy.runtime.base import Feeds

PERF_ANALYZER_ENV = "GENDEPLOY_PERF_ANALYZER"


@dataclass
class ServedResult:
    protocol: str
    concurrency: int
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    stable: bool
    tool: str  # "perf_analyzer" or "tritonclient load loop"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_perf_analyzer() -> Path | None:
    """``$GENDEPLOY_PERF_ANALYZER``, else ``perf_analyzer`` on PATH or beside this Python."""
    explicit = os.environ.get(PERF_ANALYZER_ENV)
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    found = shutil.which("perf_analyzer") or shutil.which(
        "perf_analyzer", path=str(Path(sys.executable).parent)
    )
    return Path(found) if found else None


def perf_analyzer_version(path: Path) -> str:
    try:
        done = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"does not run ({e})"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0][:120] if text else ""


def input_data_json(feeds: Feeds) -> dict[str, Any]:
    """perf_analyzer's ``--input-data`` JSON for one request (rank-1 tensors sent as [1])."""
    step: dict[str, Any] = {}
    for name, value in feeds.items():
        row = np.asarray(value)[0]
        step[name] = {"content": np.atleast_1d(row).tolist(), "shape": list(np.atleast_1d(row).shape)}
    return {"data": [step]}


def run_perf_analyzer(
    exe: Path,
    url: str,
    model: str,
    protocol: str,
    concurrency: int,
    feeds: Feeds,
    window_ms: int,
    rule: StabilityRule,
    timeout_s: float = 300.0,
) -> ServedResult:
    """One concurrency level through perf_analyzer; raises ServeError when it yields no row."""
    with tempfile.TemporaryDirectory(prefix="gendeploy-pa-") as tmp:
        data, out = Path(tmp) / "input.json", Path(tmp) / "result.csv"
        data.write_text(json.dumps(input_data_json(feeds)))
        cmd = [
            str(exe), "-m", model, "-u", url, "-i", protocol, "-b", "1",
            f"--concurrency-range={concurrency}:{concurrency}",
            "--measurement-mode=time_windows", f"--measurement-interval={window_ms}",
            f"--stability-percentage={round(rule.tolerance * 100)}",
            f"--max-trials={rule.max_windows}", f"--input-data={data}", "-f", str(out),
        ]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ServeError(f"perf_analyzer timed out after {timeout_s:.0f}s") from None
        log = done.stdout + done.stderr
        rows = list(csv.DictReader(out.open())) if out.is_file() else []
        row = next((r for r in rows if int(r.get("Concurrency", -1)) == concurrency), None)
        if row is None:
            last = [line for line in log.splitlines() if line.strip()][-1:] or ["no output"]
            raise ServeError(f"perf_analyzer gave no result (exit {done.returncode}): {last[0][:200]}")
    unstable = "Failed to obtain stable measurement" in log

    def ms(column: str) -> float:
        return round(float(row[column]) / 1e3, 4)

    return ServedResult(
        protocol=protocol,
        concurrency=concurrency,
        batch=1,
        p50_ms=ms("p50 latency"),
        p90_ms=ms("p90 latency"),
        p99_ms=ms("p99 latency"),
        mean_ms=ms("Avg latency"),
        images_per_s=round(float(row["Inferences/Second"]), 2),
        stable=not unstable,
        tool="perf_analyzer",
    )


def load_loop(
    url: str,
    model: str,
    protocol: str,
    concurrency: int,
    feeds: Feeds,
    rule: StabilityRule,
) -> ServedResult:
    """``concurrency`` threads, one client each (created in its thread: the HTTP client is
    gevent-based and bound to its thread), sending ``feeds`` back to back; the main thread cuts
    time windows from the completed requests, as perf_analyzer does, until they agree."""
    loop = _LoadLoop(url, model, protocol, concurrency, feeds)
    try:
        windows = loop.windows(rule)
    finally:
        loop.stop()
    m: Measurement = summarize(windows, rule)
    batch = int(np.asarray(feeds["z"]).shape[0])
    return ServedResult(
        protocol=protocol,
        concurrency=concurrency,
        batch=batch,
        p50_ms=round(m.percentile_ms(50), 4),
        p90_ms=round(m.percentile_ms(90), 4),
        p99_ms=round(m.percentile_ms(99), 4),
        mean_ms=round(float(np.mean(m.latencies_s)) * 1e3, 4),
        images_per_s=round(batch * m.calls_per_s, 2),
        stable=m.stable,
        tool="tritonclient load loop",
    )


class _LoadLoop:
    def __init__(self, url: str, model: str, protocol: str, concurrency: int, feeds: Feeds) -> None:
        self.args = (url, model, protocol)
        self.feeds = feeds
        self.done: list[tuple[float, float]] = []  # (sent, answered), appended under the lock
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.halt = threading.Event()
        self.warm = threading.Semaphore(0)
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(concurrency)]
        for t in self.threads:
            t.start()
        for _ in self.threads:
            if not self.warm.acquire(timeout=120):
                raise ServeError("served model did not answer a warm-up request within 120 s")
        if self.errors:
            raise ServeError(f"served request failed: {self.errors[0]}")

    def _work(self) -> None:
        from gendeploy.runtime.triton import TritonRunner

        client = None
        try:
            client = TritonRunner(*self.args)
            client.run(self.feeds)
            self.warm.release()
            while not self.halt.is_set():
                t0 = time.perf_counter()
                client.run(self.feeds)
                t1 = time.perf_counter()
                with self.lock:
                    self.done.append((t0, t1))
        except Exception as e:  # surfaced in the main thread
            self.errors.append(e)
            self.warm.release()
        finally:
            if client is not None:
                client.close()

    def windows(self, rule: StabilityRule) -> list[Window]:
        windows: list[Window] = []
        seen, start = 0, time.perf_counter()
        while not (windows_agree(windows, rule) or len(windows) >= rule.max_windows):
            time.sleep(rule.window_s)
            while len(self.done) - seen < rule.min_calls and not self.errors:
                time.sleep(0.01)
            if self.errors:
                raise ServeError(f"served request failed during the load loop: {self.errors[0]}")
            now = time.perf_counter()
            with self.lock:
                finished, seen = self.done[seen:], len(self.done)
            windows.append(Window(tuple(b - a for a, b in finished), now - start))
            start = now
        return windows

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(timeout=60)


def triton_version(http_url: str) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{http_url}/v2", timeout=5) as r:
            return str(json.loads(r.read()).get("version", ""))
    except (OSError, ValueError):
        return ""


def served_sweep(
    manifest: Any,
    export_dir: Path,
    work: Path,
    suite: Any,
    threads: int,
    module: Any,
    say: Any,
) -> dict[str, Any]:
    """Serve the export's python-backend model and sweep concurrency over HTTP and gRPC."""
    from gendeploy.bench.sweep import make_feeds
    from gendeploy.errors import GendeployError
    from gendeploy.runtime.eager import EagerRunner
    from gendeploy.runtime.triton import TritonRunner
    from gendeploy.serve.repo import RepoOptions, write_repo
    from gendeploy.serve.server import TritonServer

    model = manifest.name
    exe = find_perf_analyzer()
    pa_version = perf_analyzer_version(exe) if exe else ""
    tool = "perf_analyzer" if exe else "tritonclient load loop"
    result: dict[str, Any] = {
        "model": f"{model} (python backend, ONNX Runtime CPU inside, {threads} threads)",
        "tool": tool,
        "perf_analyzer": str(exe) if exe else f"not found (set {PERF_ANALYZER_ENV})",
        "perf_analyzer_version": pa_version,
        "results": [],
        "errors": [],
    }
    repo = work / "triton_repo" / model
    try:
        write_repo(manifest, repo, RepoOptions(intra_op_threads=threads), export_dir=export_dir)
        args = ("--model-control-mode=explicit", f"--load-model={model}")
        with TritonServer(repo, extra_args=args, log_path=work / f"{model}-tritonserver.log") as srv:
            result["triton_version"] = triton_version(srv.http_url)
            say(f"[{model}] tritonserver {result['triton_version']} up; load from {tool}")
            check_batch = min(8, manifest.batch.max)
            check = make_feeds(check_batch, manifest.latent_dim, manifest.num_classes, seed=1)
            reference = EagerRunner(module, threads=threads).run(check)
            result["max_abs_diff"] = {}
            for protocol in ("http", "grpc"):
                url = srv.http_url if protocol == "http" else srv.grpc_url
                with TritonRunner(url, model, protocol) as client:
                    out = client.run(check)
                result["max_abs_diff"][protocol] = float(f"{np.max(np.abs(out - reference)):.3g}")
                one = make_feeds(1, manifest.latent_dim, manifest.num_classes, seed=2)
                for c in suite.concurrencies:
                    r = _one_level(exe, url, model, protocol, c, one, suite, result["errors"])
                    result["results"].append(r.to_dict())
                    say(
                        f"  served {protocol:<4} concurrency {c}: {r.images_per_s:8.1f} img/s"
                        f"  p50 {r.p50_ms:7.3f} ms ({r.tool}{'' if r.stable else ', not stable'})"
                    )
    except GendeployError as e:
        result["skipped"] = str(e)
        say(f"[{model}] served sweep skipped: {e}")
    return result


def _one_level(
    exe: Path | None,
    url: str,
    model: str,
    protocol: str,
    concurrency: int,
    feeds: Feeds,
    suite: Any,
    errors: list[str],
) -> ServedResult:
    if exe is not None:
        try:
            return run_perf_analyzer(
                exe, url, model, protocol, concurrency, feeds, suite.served_window_ms, suite.rule
            )
        except ServeError as e:
            errors.append(f"{protocol} concurrency {concurrency}: {e}; used the load loop")
    result = load_loop(url, model, protocol, concurrency, feeds, suite.rule)
    if exe is not None:
        result.note = "perf_analyzer failed at this level"
    return result
