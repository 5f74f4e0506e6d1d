"""The served sweep: the model behind a real tritonserver, driven at each concurrency level.

Triton's own ``perf_analyzer`` drives the load where it is found (``$GENDEPLOY_PERF_ANALYZER``,
``PATH``, or the wrapper ``scripts/get_perf_analyzer.sh`` caches), with the same stability rule as
the in-process sweep (``--stability-percentage 10``, time windows, a cap on trials). Its exit code
is not trusted: its CSV is read and the row asked for must be there. Where it is missing, or gives
up on a level that never stabilises (no row), :mod:`gendeploy.bench.loadloop` measures that level.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from gendeploy.bench.loadloop import load_loop
from gendeploy.bench.results import ServedResult, ServedSweep
from gendeploy.bench.split import TimeSplit, describe_split, snapshot, time_split
from gendeploy.bench.sweep import make_feeds
from gendeploy.bench.timing import StabilityRule
from gendeploy.errors import GendeployError, ServeError
from gendeploy.fileio import cache_dir
from gendeploy.runtime.base import Feeds
from gendeploy.runtime.eager import EagerRunner
from gendeploy.runtime.triton import TritonRunner, connect
from gendeploy.serve.repo import RepoOptions, instance_count, write_repo
from gendeploy.serve.server import TritonServer

PERF_ANALYZER_ENV = "GENDEPLOY_PERF_ANALYZER"
# perf_analyzer's CSV splits the mean latency into these parts (microseconds)
BREAKDOWN = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)


def find_perf_analyzer() -> Path | None:
    """``$GENDEPLOY_PERF_ANALYZER``, else ``perf_analyzer`` on PATH or beside this Python, else
    the wrapper ``scripts/get_perf_analyzer.sh`` leaves in the user cache."""
    explicit = os.environ.get(PERF_ANALYZER_ENV)
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    found = shutil.which("perf_analyzer") or shutil.which(
        "perf_analyzer", path=str(Path(sys.executable).parent)
    )
    if found:
        return Path(found)
    wrapper = cache_dir() / "perf_analyzer" / "perf_analyzer"
    return wrapper if wrapper.is_file() else None


def perf_analyzer_version(path: Path) -> str:
    """What it prints for ``--version`` and, when it came from a tritonclient wheel, which."""
    try:
        done = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"does not run ({e})"
    text = (done.stdout + done.stderr).strip().splitlines()
    wheels = sorted(path.parent.glob("wheel/tritonclient-*.whl"))
    source = f" from {wheels[-1].name}" if wheels else ""
    return " ".join((text[0][:120] if text else "").split()) + source


def input_data_json(feeds: Feeds) -> dict[str, Any]:
    """perf_analyzer's ``--input-data`` JSON for one request (rank-1 tensors sent as [1])."""
    step: dict[str, Any] = {}
    for name, value in feeds.items():
        row = np.asarray(value)[0]
        step[name] = {
            "content": np.atleast_1d(row).tolist(),
            "shape": list(np.atleast_1d(row).shape),
        }
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
            str(exe),
            "-m",
            model,
            "-u",
            url,
            "-i",
            protocol,
            "-b",
            "1",
            f"--concurrency-range={concurrency}:{concurrency}",
            "--measurement-mode=time_windows",
            f"--measurement-interval={window_ms}",
            f"--stability-percentage={round(rule.tolerance * 100)}",
            f"--max-trials={rule.max_windows}",
            f"--input-data={data}",
            "-f",
            str(out),
        ]
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise ServeError(f"perf_analyzer timed out after {timeout_s:.0f}s") from None
        client_cpu_s = _cpu_s(resource.getrusage(resource.RUSAGE_CHILDREN)) - _cpu_s(used)
        log = done.stdout + done.stderr
        rows = list(csv.DictReader(out.open())) if out.is_file() else []
        row = next((r for r in rows if int(r.get("Concurrency", -1)) == concurrency), None)
        if row is None:
            last = [line for line in log.splitlines() if line.strip()][-1:] or ["no output"]
            raise ServeError(
                f"perf_analyzer gave no result (exit {done.returncode}): {last[0][:200]}"
            )
    unstable = "Failed to obtain stable measurement" in log

    def ms(column: str) -> float:
        return round(float(row[column]) / 1e3, 4)

    parts = {c: ms(c) for c in BREAKDOWN if c in row}

    return ServedResult(
        protocol=protocol,
        concurrency=concurrency,
        batch=1,
        p50_ms=ms("p50 latency"),
        p90_ms=ms("p90 latency"),
        p99_ms=ms("p99 latency"),
        mean_ms=ms("Avg latency") if "Avg latency" in row else round(sum(parts.values()), 4),
        images_per_s=round(float(row["Inferences/Second"]), 2),
        stable=not unstable,
        tool="perf_analyzer",
        breakdown_ms=parts,
        client_cpu_s=round(client_cpu_s, 3),
    )


def _cpu_s(usage: resource.struct_rusage) -> float:
    return float(usage.ru_utime + usage.ru_stime)


def triton_version(http_url: str) -> str:
    """The server's version from its metadata ('' where it does not say)."""
    from tritonclient.utils import InferenceServerException

    client = connect(http_url, "http", timeout_s=5.0)
    try:
        return str(client.get_server_metadata().get("version", ""))
    except (OSError, InferenceServerException):
        return ""
    finally:
        client.close()


def served_sweep(
    manifest: Any,
    export_dir: Path,
    work: Path,
    suite: Any,
    threads: int,
    module: Any,
    say: Any,
) -> ServedSweep:
    """Serve the export's python-backend model and sweep concurrency over HTTP and gRPC."""
    model = manifest.name
    exe = find_perf_analyzer()
    pa_version = perf_analyzer_version(exe) if exe else ""
    tool = "perf_analyzer" if exe else "tritonclient load loop"
    options = RepoOptions(instances=suite.instances)
    if suite.queue_delay_us is not None:
        options = replace(options, queue_delay_us=suite.queue_delay_us)
    instances = instance_count(options, manifest, "python", gpu=False)
    per_instance = max(1, threads // instances)  # the instances share the CPUs
    options = replace(options, intra_op_threads=per_instance, instances=instances)
    result = ServedSweep(
        model=f"{model} (python backend, ONNX Runtime CPU inside, {per_instance} threads)",
        tool=tool,
        perf_analyzer=str(exe) if exe else f"not found (set {PERF_ANALYZER_ENV})",
        perf_analyzer_version=pa_version,
    )
    repo = work / "triton_repo" / model
    try:
        result.queue_delay_us, result.instances = options.queue_delay_us, options.instances
        write_repo(manifest, repo, options, export_dir=export_dir)
        # the launcher loads only what this server's backends can serve (not <name>_onnx here)
        with TritonServer(repo, log_path=work / f"{model}-tritonserver.log") as srv:
            result.triton_version = triton_version(srv.http_url)
            say(f"[{model}] tritonserver {result.triton_version} up; load from {tool}")
            check_batch = min(8, manifest.batch.max)
            check = make_feeds(check_batch, manifest.latent_dim, manifest.num_classes, seed=1)
            reference = EagerRunner(module, threads=threads).run(check)
            for protocol in ("http", "grpc"):
                url = srv.http_url if protocol == "http" else srv.grpc_url
                with TritonRunner(url, model, protocol) as client:
                    out = client.run(check)
                result.max_abs_diff[protocol] = float(f"{np.max(np.abs(out - reference)):.3g}")
                one = make_feeds(1, manifest.latent_dim, manifest.num_classes, seed=2)
                for c in suite.concurrencies:
                    level = partial(
                        _one_level, exe, url, model, protocol, c, one, suite, result.errors
                    )
                    r = _split_level(srv, model, options.instances, level)
                    result.results.append(r)
                    say(
                        f"  served {protocol:<4} concurrency {c}: {r.images_per_s:8.1f} img/s"
                        f"  p50 {r.p50_ms:7.3f} ms ({r.tool}{'' if r.stable else ', not stable'})"
                    )
                    if r.split:
                        say(f"    {describe_split(TimeSplit(**r.split))}")
    except GendeployError as e:
        result.skipped = str(e)
        say(f"[{model}] served sweep skipped: {e}")
    return result


def _split_level(
    srv: TritonServer, model: str, instances: int, level: Callable[[], ServedResult]
) -> ServedResult:
    """One level's result, with where each image's time went (``bench.split``) read around it."""
    before = snapshot(srv, model, after_load=False)
    result = level()
    after = snapshot(srv, model, after_load=True)
    split = time_split(before, after, instances, result.images_per_s, result.client_cpu_s)
    result.split = split.to_dict() if split else {}
    return result


# perf_analyzer runs per level: one that finds no stable window is run again with windows twice
# as long (a busy moment passes, a slow level gets more requests per window), then the load loop
PA_ATTEMPTS = 2


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
    failures = []
    for attempt in range(PA_ATTEMPTS if exe is not None else 0):
        assert exe is not None
        window_ms = suite.served_window_ms * 2**attempt
        rule = replace(suite.served_rule, window_s=window_ms / 1e3)
        try:
            result = run_perf_analyzer(
                exe, url, model, protocol, concurrency, feeds, window_ms, rule
            )
        except ServeError as e:
            failures.append(f"{window_ms} ms windows: {e}")
            continue
        if attempt:
            result.note = f"stable with {window_ms} ms windows"
        return result
    if failures:
        errors.append(
            f"{protocol} concurrency {concurrency}: {'; '.join(failures)}; used the load loop"
        )
    result = load_loop(url, model, protocol, concurrency, feeds, suite.served_rule)
    if exe is not None:
        result.note = "perf_analyzer failed at this level"
    return result
