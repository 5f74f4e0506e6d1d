"""The dynamic batcher's 500 ms timer (docs/served-path.md), against a real tritonserver.

Four clients send batch-1 requests back to back, as perf_analyzer at concurrency 4 does. With a
queue limit (``max_queue_size``, once gendeploy's default), Triton's batcher loses the wake-up of
a request that arrives while the instance finishes a batch and waits out its 500 ms idle timer:
~1% of gRPC requests took 500-575 ms with a p90 of a few ms. Its signature, which contention alone
does not produce: requests in a narrow band around 500 ms (client side), and, in Triton's trace of
every request, requests that waited that long in the queue while the model computed nothing.

No run is traced. Tracing every request at concurrency 4 is not safe in Triton 2.51: its HTTP
frontend corrupted responses and then died (SIGILL in libc) in two of four runs here; over gRPC,
beside a busy process, the server died without a log line ~4,500 requests in, and a traced
queue-limit run left requests hanging until the client's deadline (2026-12-07); the one request
that lost an input (``frontend_race``) was also in a traced gRPC run. So both runs are judged on
the client's latencies; ``gendeploy.serve.trace``, which found the timer, is tested on a trace
file in tests/test_serve_trace.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serve_support import TINY_CONDITIONAL, build_export, make_checkpoint, require_tritonserver

from gendeploy.runtime.triton import InferenceError, TritonRunner
from gendeploy.serve.repo import RepoOptions, write_repo
from gendeploy.serve.server import TritonServer

pytestmark = [pytest.mark.triton, pytest.mark.slow]

TIMER_BAND_MS = (480.0, 650.0)  # the batcher's 500 ms, plus the batch it then runs
CONTENTION_MS = 100.0  # what a busy machine may add to p99 beyond 3x p90 without a timer
SECONDS = 12.0  # at ~1% of requests, a stall shows ~20 times in 12 s at concurrency 4
PINNED_SECONDS = 20.0  # the pinned stall must show at least once, also on a busy machine
CLIENTS = 4


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tritonserver()
    root = tmp_path_factory.mktemp("stall")
    checkpoint = make_checkpoint(TINY_CONDITIONAL, root / "tinyc.pt")
    return build_export(checkpoint, root / "export", "tinyc")


def frontend_race(e: BaseException) -> bool:
    """Triton 2.51's gRPC frontend once (CI, 2026-12-07) answered one request of a 20 s run at
    concurrency 4 with ``input 'labels' does not exist in request`` [INVALID_ARGUMENT]: the
    core's request, built from the client's well-formed proto, had lost an input before our
    model saw it. Not reproduced in 300,000 requests here with tracing on or off."""
    return isinstance(e, InferenceError) and "does not exist in request" in str(e)


def drive(url: str, protocol: str, seconds: float) -> list[float]:
    """``CLIENTS`` threads, one client each, batch-1 seed requests back to back; latencies in ms.
    Any error fails the run, except the frontend race above once per 1,000 requests."""
    latencies: list[float] = []
    races: list[BaseException] = []
    errors: list[BaseException] = []
    deadline = time.monotonic() + seconds

    def client(seed: int) -> None:
        try:
            with TritonRunner(url, "tinyc", protocol) as runner:
                feeds = {"seed": np.array([seed]), "labels": np.array([seed % 4])}
                runner.run(feeds)  # connected and warm before the clock counts
                while time.monotonic() < deadline:
                    start = time.perf_counter()
                    try:
                        runner.run(feeds)
                    except InferenceError as e:
                        if not frontend_race(e):
                            raise
                        races.append(e)
                        continue
                    latencies.append((time.perf_counter() - start) * 1e3)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    assert not errors, errors[0]
    assert len(races) <= 1 + len(latencies) // 1000, (len(races), len(latencies), races[0])
    return latencies


def served_run(
    export_dir: Path, tmp_path: Path, protocol: str, options: RepoOptions, seconds: float = SECONDS
) -> dict:
    write_repo(export_dir, tmp_path / "repo", options)
    with TritonServer(tmp_path / "repo", log_path=tmp_path / "server.log") as server:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        latencies = drive(url, protocol, seconds)
    low, high = TIMER_BAND_MS
    p90, p99 = np.percentile(latencies, [90, 99])
    return {
        "requests": len(latencies),
        "p90": float(p90),
        "p99": float(p99),
        "in_band": sum(low <= x <= high for x in latencies),
    }


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_no_request_waits_out_the_batchers_500_ms_timer(
    export_dir: Path, tmp_path: Path, protocol: str
) -> None:
    """The repository's own configuration (two instances on CPU, no batching delay) at
    concurrency 4."""
    run = served_run(export_dir, tmp_path, protocol, RepoOptions())
    assert run["requests"] > 200, run
    assert run["in_band"] == 0, f"500 ms stalls: {run}"
    assert run["p99"] <= 3 * run["p90"] + CONTENTION_MS, run


def test_a_queue_limit_brings_the_stall_back(export_dir: Path, tmp_path: Path) -> None:
    """Pins the upstream behaviour the default avoids (Triton 2.51 and core's main branch as
    checked): if this fails, the batcher was fixed and a queue limit costs nothing again."""
    # one instance, as when the stall was found: the lost wake-up needs the only instance busy
    # (with two, a busy machine gave 0 of 17,734 requests at 500 ms)
    options = RepoOptions(max_queue_size=256, instances=1)
    run = served_run(export_dir, tmp_path, "grpc", options, PINNED_SECONDS)
    assert run["in_band"] > 0, run
