"""Triton's request tracing, read back: when each request reached each stage.

A server started with :func:`trace_args` writes, for every request (``rate=1``), the timestamps
Triton takes at each stage (``REQUEST_START``, ``QUEUE_START``, ``COMPUTE_START``,
``COMPUTE_INPUT_END``, ``COMPUTE_OUTPUT_START``, ``COMPUTE_END``, ``REQUEST_END``, and the
frontend's ``HTTP_*`` / ``GRPC_*`` ones) to ``<file>.<n>``, ``log_every`` requests per file.
:func:`read_traces` turns them into one :class:`RequestTrace` per request; :func:`timer_waits`
finds the requests that waited in the queue for a fixed timer while the model was idle, the
signature of the dynamic batcher's 500 ms stall (docs/served-path.md).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def trace_args(path: Path, rate: int = 1, log_every: int = 100) -> tuple[str, ...]:
    """tritonserver flags that trace every ``rate``-th request's timestamps into ``path.<n>``."""
    return (
        f"--trace-config=triton,file={path}",
        f"--trace-config=triton,log-frequency={log_every}",
        "--trace-config=level=TIMESTAMPS",
        f"--trace-config=rate={rate}",
        "--trace-config=count=-1",
    )


@dataclass(frozen=True)
class RequestTrace:
    id: int
    model: str
    stamps: dict[str, int]  # stage -> ns (the server's steady clock)

    def span_ms(self, start: str, end: str) -> float | None:
        if start not in self.stamps or end not in self.stamps:
            return None
        return (self.stamps[end] - self.stamps[start]) / 1e6

    @property
    def queue_ms(self) -> float | None:
        """Waiting for the batcher and an instance: queued until the model started on it."""
        return self.span_ms("QUEUE_START", "COMPUTE_START")

    @property
    def compute(self) -> tuple[int, int] | None:
        stamps = self.stamps
        if "COMPUTE_START" not in stamps or "COMPUTE_END" not in stamps:
            return None
        return stamps["COMPUTE_START"], stamps["COMPUTE_END"]


def trace_files(path: Path) -> list[Path]:
    """What a server traced into ``path``: ``path.0``, ``path.1``, ... (and ``path`` itself)."""
    files = [p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()]
    files.sort(key=lambda p: int(p.suffix[1:]))
    return ([path] if path.is_file() else []) + files


def read_traces(path: Path) -> list[RequestTrace]:
    """Every complete request trace the server wrote (a file cut short by a kill is skipped)."""
    stamps: dict[int, dict[str, int]] = defaultdict(dict)
    models: dict[int, str] = {}
    for file in trace_files(path):
        try:
            entries = json.loads(file.read_text())
        except ValueError:
            continue
        for entry in entries:
            trace_id = int(entry["id"])
            if "model_name" in entry:
                models[trace_id] = str(entry["model_name"])
            for stamp in entry.get("timestamps", []):
                stamps[trace_id].setdefault(str(stamp["name"]), int(stamp["ns"]))
    return [
        RequestTrace(i, models.get(i, ""), s)
        for i, s in sorted(stamps.items())
        if "QUEUE_START" in s and "COMPUTE_START" in s
    ]


def busy_ns(intervals: Iterable[tuple[int, int]], start: int, end: int) -> int:
    """How much of [start, end] the (possibly overlapping) intervals cover."""
    covered, reached = 0, start
    for lo, hi in sorted(intervals):
        lo, hi = max(lo, reached), min(hi, end)
        if hi > lo:
            covered += hi - lo
            reached = hi
    return covered


def timer_waits(
    traces: list[RequestTrace], low_ms: float, high_ms: float, idle_share: float = 0.9
) -> list[RequestTrace]:
    """Requests that waited in the queue between ``low_ms`` and ``high_ms`` while their model
    computed nothing for at least ``idle_share`` of the wait: a timer, not a busy server (a
    request behind slow batches waits with the model busy)."""
    computing: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for t in traces:
        if t.compute is not None:
            computing[t.model].add(t.compute)
    found = []
    for t in traces:
        wait = t.queue_ms
        if wait is None or not low_ms <= wait <= high_ms:
            continue
        start, end = t.stamps["QUEUE_START"], t.stamps["COMPUTE_START"]
        if busy_ns(computing[t.model], start, end) <= (1 - idle_share) * (end - start):
            found.append(t)
    return found
