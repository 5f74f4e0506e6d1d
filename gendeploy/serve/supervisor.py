"""Keep a tritonserver up: restart it when it dies, on the same ports, with a short backoff.

Triton 2.51's HTTP frontend aborts the whole process on some requests (an input shape whose size
overflows allocates until ``std::bad_alloc``) before any model code runs, so no validation in the
model can prevent it, and anyone who can reach the HTTP port can send it. So a server that was
serving and dies is always restarted, after a wait that doubles up to ``max_backoff_s``: a
hostile client costs seconds of downtime per request, never the service. Giving up is for a
server that cannot start: ``max_failed_starts`` starts in ``window_s`` that die or time out
before ready (a port taken, a model that no longer loads). Each crash is logged with its cause
(the server's last log lines) and the clients that had a connection open when it died
(``serve.peers``), with how many of the recent crashes each was at.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gendeploy.errors import ServeError, UsageError
from gendeploy.serve.peers import CrashPeers
from gendeploy.serve.server import StartCancelled, TritonServer


@dataclass(frozen=True)
class RestartPolicy:
    """Restart after every crash, waiting ``first_backoff_s`` doubling up to ``max_backoff_s``
    while crashes keep coming within ``window_s``; give up after ``max_failed_starts`` starts
    that fail before ready within ``window_s``."""

    max_failed_starts: int = 5
    window_s: float = 300.0
    first_backoff_s: float = 0.5
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_failed_starts < 1 or self.window_s <= 0:
            raise UsageError("--max-failed-starts must be >= 1 and --crash-window-s > 0")
        if not 0 <= self.first_backoff_s <= self.max_backoff_s:
            raise UsageError("restart backoff must satisfy 0 <= first <= max")


@dataclass(frozen=True)
class Crash:
    at: float  # time.monotonic() when it was noticed (the window ignores clock changes)
    status: str  # "killed by SIGABRT", "exit code 1", or "did not start"
    cause: str  # the server's last log lines
    started: bool  # it had been ready (a crash while serving, not a failed start)


@dataclass
class Supervisor:
    """Restarts ``server`` when it dies; ``say`` reports each crash and restart."""

    server: TritonServer
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    say: Callable[[str], None] = print
    crashes: list[Crash] = field(default_factory=list)
    peers: CrashPeers | None = None

    def recent(self, now: float) -> list[Crash]:
        return [c for c in self.crashes if now - c.at <= self.policy.window_s]

    def backoff_s(self, now: float) -> float:
        doublings = max(len(self.recent(now)) - 1, 0)
        return float(min(self.policy.first_backoff_s * 2**doublings, self.policy.max_backoff_s))

    def record(self, status: str, cause: str, started: bool = True) -> Crash:
        """Note a crash; raise ``ServeError`` when too many starts failed in the window."""
        crash = Crash(time.monotonic(), status, cause, started)
        self.crashes.append(crash)
        log, window = self.server.log_path, self.policy.window_s
        who = ""
        if started:
            if self.peers is None:
                self.peers = CrashPeers(self.server.ports_by_number())
            who = f"; {self.peers.record(crash.at, window)} (window {window:.0f}s)"
        self.say(f"tritonserver died ({status}): {cause}{who} (log: {log})")
        failed = [c for c in self.recent(crash.at) if not c.started]
        if len(failed) >= self.policy.max_failed_starts:
            raise ServeError(
                f"tritonserver failed to start {len(failed)} times in {window:.0f}s "
                f"(last: {cause}); giving up (log: {log})"
            )
        return crash

    def restart(self, stop: threading.Event) -> bool:
        """After a crash: clean up, wait the backoff, start again; retried until it starts,
        ``stop`` is set (False), or too many starts failed (``ServeError``)."""
        status, cause = self.server.exit_status(), self.server.crash_cause()
        started = True
        while True:
            self.server.reap()  # its stubs and their shared memory; what it served stays pinned
            self.record(status, cause, started)
            wait = self.backoff_s(time.monotonic())
            self.say(f"restarting tritonserver in {wait:.1f}s on the same ports")
            if stop.wait(wait):
                return False
            try:
                self.server.start()
            except StartCancelled:
                return False
            except ServeError as e:
                status, cause, started = "did not start", str(e), False
                continue
            self.say(f"tritonserver is back (start {self.server.starts})")
            return True
