"""A tritonclient load loop: the served sweep's fallback where perf_analyzer is missing or gives up.

``concurrency`` threads each hold one client (created in its own thread: the HTTP client is
gevent-based and bound to the thread that made it) and send the same batch back to back. The main
thread cuts time windows from the completed requests, as perf_analyzer does, and stops when the
windows agree by :mod:`gendeploy.bench.timing`'s rule or the cap is reached.
"""

from __future__ import annotations

import resource
import threading
import time

import numpy as np

from gendeploy.bench.results import ServedResult
from gendeploy.bench.timing import Measurement, StabilityRule, Window, summarize, windows_agree
from gendeploy.errors import ServeError
from gendeploy.runtime.base import Feeds
from gendeploy.runtime.triton import TritonRunner


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
    used = resource.getrusage(resource.RUSAGE_SELF)
    loop = _LoadLoop(url, model, protocol, concurrency, feeds)
    try:
        windows = loop.windows(rule)
    finally:
        loop.stop()
    now = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu_s = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    m: Measurement = summarize(windows, rule)
    batch = int(np.asarray(feeds["z"]).shape[0])
    return ServedResult(
        protocol=protocol,
        concurrency=concurrency,
        batch=batch,
        **m.latency_fields(),
        images_per_s=round(batch * m.calls_per_s, 2),
        stable=m.stable,
        tool="tritonclient load loop",
        client_cpu_s=round(client_cpu_s, 3),  # this process: the clients are its threads
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
        self.threads = [
            threading.Thread(target=self._work, daemon=True) for _ in range(concurrency)
        ]
        for t in self.threads:
            t.start()
        for _ in self.threads:
            if not self.warm.acquire(timeout=120):
                raise ServeError("served model did not answer a warm-up request within 120 s")
        if self.errors:
            raise ServeError(f"served request failed: {self.errors[0]}")

    def _work(self) -> None:
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
