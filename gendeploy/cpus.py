"""How many CPUs this process really has, and a thread count that holds up beside a co-tenant.

torch and ONNX Runtime size their thread pools from the host's cores. In a container limited to
2 CPUs on a 64-core node that is 64 threads time-sliced onto 2 CPUs; on a 2-core machine where
another process keeps one core busy, an OpenMP pool of 2 waits at every barrier for the thread
that shares its core (training ran 3.4x slower that way, where 1 thread lost a quarter).

- ``available_cpus()``: the CPUs of the affinity mask, capped by the cgroup CPU quota (v2
  ``cpu.max`` or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, the tightest along the path).
- ``configure(threads)``: the process's thread count: ``threads`` (``--threads``), else
  ``$GENDEPLOY_THREADS``, else ``available_cpus()``; a given count is pinned, the default adapts.
- ``adapt()``: called between units of work (a training step, a batch of the quality gate) on
  the thread that runs them; with the default count, every ``INTERVAL_S`` it measures the CPU
  time other processes took from our CPUs (``/proc/stat`` minus our own) and runs one thread
  fewer per core they keep busy, and back up when they leave. On a quiet machine it never moves,
  so a run is what it was with a fixed count.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gendeploy.errors import UsageError

ENV = "GENDEPLOY_THREADS"
INTERVAL_S = 2.0  # how often adapt() measures; the first decision comes after FIRST_S
FIRST_S = 0.5
TICK_S = 0.01  # /proc/stat counts in USER_HZ ticks (100 per second on Linux)


def affinity_cpus() -> list[int]:
    """The CPUs this process may run on (all of them where the OS has no affinity call)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _mounts(root: Path) -> list[tuple[str, str, str, set[str]]]:
    """(root of the mount in its hierarchy, mount point, fs type, super options) of every cgroup
    mount in /proc/self/mountinfo."""
    try:
        text = (root / "proc/self/mountinfo").read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        fields, _, tail = line.partition(" - ")
        parts, extra = fields.split(), tail.split()
        if len(parts) >= 5 and len(extra) >= 3 and extra[0] in ("cgroup", "cgroup2"):
            found.append((parts[3], parts[4], extra[0], set(extra[2].split(","))))
    return found


def _ancestors(mount: Path, mount_root: str, path: str) -> list[Path]:
    """The cgroup directory of ``path`` under ``mount`` and every one above it up to the mount,
    innermost first (``path`` is relative to the hierarchy; the mount shows ``mount_root``)."""
    if mount_root != "/" and (path + "/").startswith(mount_root.rstrip("/") + "/"):
        path = path[len(mount_root.rstrip("/")) :]
    parts = [p for p in path.split("/") if p]
    return [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """CPUs' worth of time the cgroup quota allows (e.g. 1.5), None where there is no quota.

    ``root`` is the file-system root to read under (tests pass a fake tree)."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for mount_root, mount_point, fstype, options in _mounts(root):
        mount = root / mount_point.lstrip("/")
        for line in lines:
            hierarchy, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if fstype == "cgroup2" and hierarchy == "0" and not controllers:
                for d in _ancestors(mount, mount_root, path):
                    cpu_max, _, cpu_period = (_read(d / "cpu.max") or "max").partition(" ")
                    if cpu_max != "max" and cpu_period:
                        limits.append(int(cpu_max) / int(cpu_period))
            elif fstype == "cgroup" and "cpu" in controllers.split(",") and "cpu" in options:
                for d in _ancestors(mount, mount_root, path):
                    quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                    if quota and period and int(quota) > 0 and int(period) > 0:
                        limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def available_cpus(root: Path = Path("/"), cpus: int | None = None) -> int:
    """The CPUs this process can keep busy: its affinity mask (or ``cpus``), capped by the cgroup
    quota (rounded up: 1.5 CPUs' quota runs 2 threads at 75%)."""
    cpus = len(affinity_cpus()) if cpus is None else cpus
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit - 1e-9)))
    return max(1, cpus)


def busy_seconds(cpus: list[int], stat: Path = Path("/proc/stat")) -> float | None:
    """CPU seconds spent not idle on ``cpus`` since boot (steal included: a hypervisor's other
    guests are co-tenants too); None where ``/proc/stat`` cannot be read."""
    try:
        text = stat.read_text()
    except OSError:
        return None
    wanted, ticks = {f"cpu{c}" for c in cpus}, 0
    for line in text.splitlines():
        name, *values = line.split()
        if name in wanted:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (
                int(v) for v in (values + ["0"] * 8)[:8]
            )
            ticks += user + nice + system + irq + softirq + steal
    return ticks * TICK_S


@dataclass
class Governor:
    """Adapts the thread count to the CPUs other processes leave free (see the module doc)."""

    limit: int  # never more threads than this
    apply: Callable[[int], None]
    busy: Callable[[], float | None]  # CPU seconds used on our CPUs by everyone, ours included
    own: Callable[[], float] = time.process_time  # our CPU seconds
    clock: Callable[[], float] = time.monotonic
    interval_s: float = INTERVAL_S
    threads: int = 0
    other: float = 0.0  # CPUs' worth of time other processes took in the last window
    changes: list[tuple[float, int]] = field(default_factory=list)  # (seconds in, threads)

    def __post_init__(self) -> None:
        self.threads = self.threads or self.limit
        self._t0 = self._start = self.clock()
        self._busy0, self._own0 = self.busy(), self.own()
        self._wait = min(FIRST_S, self.interval_s)

    def poll(self) -> int:
        """The thread count to run with now; re-decided once per interval."""
        now = self.clock()
        if now - self._t0 < self._wait:
            return self.threads
        busy, own = self.busy(), self.own()
        if busy is None or self._busy0 is None:
            return self.threads
        wall = now - self._t0
        self.other = max(0.0, ((busy - self._busy0) - (own - self._own0)) / wall)
        self._t0, self._busy0, self._own0, self._wait = now, busy, own, self.interval_s
        want = max(1, min(self.limit, math.floor(self.limit - self.other + 0.5)))
        if want != self.threads:
            self.threads = want
            self.apply(want)
            self.changes.append((round(now - self._start, 1), want))
        return self.threads


@dataclass
class ThreadPlan:
    """The process's threads: how many, where the number came from, and the governor, if any."""

    threads: int
    source: str  # "--threads", "$GENDEPLOY_THREADS" or "available CPUs"
    governor: Governor | None = None

    @property
    def pinned(self) -> bool:
        return self.governor is None


_PLAN: ThreadPlan | None = None


def requested_threads(threads: int | None) -> tuple[int | None, str]:
    """(count, where it came from) of an explicit request: the flag, else the environment."""
    if threads is not None and threads > 0:
        return threads, "--threads"
    if threads is not None and threads < 0:
        raise UsageError(f"--threads must be >= 1 (0 or none: adapt to the machine), got {threads}")
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None, "available CPUs"
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"${ENV}={value!r}: set it to a thread count >= 1, or unset it")
    return int(value), f"${ENV}"


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def configure(threads: int | None = None, adapt: bool = True) -> ThreadPlan:
    """Set torch's thread count for this process and remember it for ``current()``; a count
    asked for (flag or environment) is pinned, otherwise it adapts when ``adapt``."""
    global _PLAN
    asked, source = requested_threads(threads)
    count = asked or available_cpus()
    _set_torch_threads(count)
    governor = None
    if asked is None and adapt and count > 1:
        cpus = affinity_cpus()
        governor = Governor(count, _set_torch_threads, lambda: busy_seconds(cpus))
    _PLAN = ThreadPlan(count, source, governor)
    return _PLAN


def plan() -> ThreadPlan | None:
    return _PLAN


def current() -> int:
    """Threads to give a new engine session (ONNX Runtime, OpenVINO) now; call it on the thread
    that does the work (it follows the governor, as ``adapt``)."""
    if _PLAN is None:
        return available_cpus()
    return adapt()


def adapt() -> int:
    """Between units of work: follow the governor (a no-op for a pinned count)."""
    if _PLAN is None:
        return available_cpus()
    if _PLAN.governor is None:
        return _PLAN.threads
    return _PLAN.governor.poll()


def pinned() -> bool:
    """Whether the thread count was asked for (it never changes), or no plan was made."""
    return _PLAN is None or _PLAN.pinned
