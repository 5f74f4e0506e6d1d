"""Keep a tritonserver up: restart it when it dies, on the same ports, with a bounded backoff.

Triton 2.51's HTTP frontend aborts the whole process on some requests (an input shape whose size
overflows allocates until ``std::bad_alloc``) before any model code runs, so no validation in the
model can prevent it. The supervisor turns such a crash into a few seconds of unavailability:
it records the cause (the last lines the server logged), waits, restarts, and gives up with a
clear error when the server keeps dying (``RestartPolicy``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gendeploy.errors import ServeError, UsageError
from gendeploy.serve.server import StartCancelled, TritonServer


@dataclass(frozen=True)
class RestartPolicy:
    """Give up after ``max_crashes`` crashes within ``window_s``; wait ``first_backoff_s`` before
    the first restart, doubling up to ``max_backoff_s`` while crashes keep coming."""

    max_crashes: int = 5
    window_s: float = 300.0
    first_backoff_s: float = 0.5
    max_backoff_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_crashes < 1 or self.window_s <= 0:
            raise UsageError("--max-crashes must be >= 1 and --crash-window-s > 0")
        if not 0 <= self.first_backoff_s <= self.max_backoff_s:
            raise UsageError("restart backoff must satisfy 0 <= first <= max")


@dataclass(frozen=True)
class Crash:
    at: float  # time.monotonic() when it was noticed (the window ignores clock changes)
    status: str  # "killed by SIGABRT", "exit code 1", or "did not start: ..."
    cause: str  # the server's last log lines


@dataclass
class Supervisor:
    """Restarts ``server`` when it dies; ``say`` reports each crash and restart."""

    server: TritonServer
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    say: Callable[[str], None] = print
    crashes: list[Crash] = field(default_factory=list)

    def recent(self, now: float) -> list[Crash]:
        return [c for c in self.crashes if now - c.at <= self.policy.window_s]

    def backoff_s(self, now: float) -> float:
        doublings = max(len(self.recent(now)) - 1, 0)
        return float(min(self.policy.first_backoff_s * 2**doublings, self.policy.max_backoff_s))

    def record(self, status: str, cause: str) -> Crash:
        """Note a crash; raise ``ServeError`` when there were too many in the window."""
        crash = Crash(time.monotonic(), status, cause)
        self.crashes.append(crash)
        recent = self.recent(crash.at)
        log = self.server.log_path
        self.say(f"tritonserver died ({status}): {cause} (log: {log})")
        if len(recent) >= self.policy.max_crashes:
            raise ServeError(
                f"tritonserver died {len(recent)} times in {self.policy.window_s:.0f}s "
                f"(last: {status}: {cause}); giving up (log: {log})"
            )
        return crash

    def restart(self, stop: threading.Event) -> bool:
        """After a crash: clean up, wait the backoff, start again; retried (as crashes) until it
        starts, ``stop`` is set (False), or the policy gives up (``ServeError``)."""
        status, cause = self.server.exit_status(), self.server.crash_cause()
        while True:
            self.server.reap()  # its stubs and their shared memory; what it served stays pinned
            self.record(status, cause)
            wait = self.backoff_s(time.monotonic())
            self.say(f"restarting tritonserver in {wait:.1f}s on the same ports")
            if stop.wait(wait):
                return False
            try:
                self.server.start()
            except StartCancelled:
                return False
            except ServeError as e:
                status, cause = "did not start", str(e)
                continue
            self.say(f"tritonserver is back (start {self.server.starts})")
            return True
