"""What machine and software a bench ran on: CPU model and flags, cores, load, GPU, versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from gendeploy import cpus

# The CPU flags that decide which kernels run (FP32 SIMD width, bf16/fp16/int8 units, AMX tiles).
KERNEL_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)

PACKAGES = (
    "torch",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "tensorrt",
    "tritonclient",
    "nvidia-pytriton",
)


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model name and the kernel-relevant flags (Linux ``/proc/cpuinfo``; else platform)."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    ids: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and value:
                model = value
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key in ("cpu family", "model", "stepping") and key not in ids:
                ids[key] = value
    except OSError:
        pass
    if ids:  # a hypervisor may mask the name ("AMD EPYC"); family/model still say which one
        model += " (" + ", ".join(f"{k} {v}" for k, v in ids.items()) + ")"
    return {"model": model, "flags": [f for f in KERNEL_FLAGS if f in flags]}


def gpu_info() -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(
            {
                "name": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
            }
        )
    return out


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name in ("tensorrt", "onnxruntime"):
                versions[name] = "not installed"
    return versions


def tool_version(path: str | None, *args: str) -> str:
    """First line a tool prints for its version flag, or "" when it cannot say."""
    if not path or not shutil.which(path):
        return ""
    try:
        done = subprocess.run(
            [path, *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0][:120] if text else ""


def machine_info() -> dict[str, Any]:
    """Everything a reader needs to judge the numbers, taken at the start of a run."""
    import psutil
    import torch

    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_info(),
        "logical_cores": os.cpu_count() or 0,
        "physical_cores": psutil.cpu_count(logical=False) or 0,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1m_5m_15m": load_average(),
        "gpus": gpu_info(),
        "available_cpus": {
            "affinity": len(cpus.affinity_cpus()),
            "cgroup_quota": cpus.cgroup_cpu_limit(),
            "usable": cpus.available_cpus(),
        },
        "threads": {
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""),
        },
        "versions": package_versions(),
    }


def load_average() -> list[float]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return [round(x, 2) for x in load]


BUSY = 0.10  # slack: the share of the machine other processes may take from our threads


def contended(share: float, threads: int, cores: int) -> bool:
    """Did other processes need cores our ``threads`` needed? (more than BUSY of the machine)"""
    return share * cores > (cores - threads) + BUSY * cores


class BusyMeter:
    """How much of the machine's CPU time went to other processes while a bench ran.

    A bench on a shared machine is only as good as this figure: 0.0 means the machine was ours.
    A thread samples every process's CPU time each ``interval_s``: a process is ours once it is
    seen with this one as an ancestor (servers, perf_analyzer, Model Analyzer, the python stubs)
    and stays ours after its parent dies. The kernel's children times cannot do this: they lose
    a descendant that outlives its parent (Triton's stubs under Model Analyzer), which then read
    as another process's work. Another process that starts and ends between two samples is
    missed.
    """

    def __init__(self, interval_s: float = 2.0) -> None:
        import psutil

        self._cores = psutil.cpu_count() or 1
        self._since, self._wall0 = time.time(), time.monotonic()
        self._ours: set[tuple[int, float]] = set()  # (pid, create time)
        self._cpu: dict[tuple[int, float], float] = {}  # other processes' CPU s, last sample
        self._taken: dict[tuple[int, float], float] = {}  # CPU s each other process took
        self._ours_cpu: dict[tuple[int, float], tuple[str, float]] = {}  # name, CPU s at last look
        self._other = 0.0
        self._share: float | None = None
        self._wall = 0.0  # every core's seconds from start to stop
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(
            target=self._run, args=(interval_s,), name="gendeploy-busy-meter", daemon=True
        )
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._sample()

    def _sample(self) -> None:
        import psutil

        procs: dict[int, tuple[int, float, float]] = {}  # pid: (ppid, create time, CPU s)
        names: dict[int, str] = {}
        for p in psutil.process_iter(["ppid", "create_time", "cpu_times", "name"]):
            i = p.info
            if i["cpu_times"] is not None and i["create_time"] is not None:
                procs[p.pid] = (i["ppid"], i["create_time"], i["cpu_times"][0] + i["cpu_times"][1])
                names[p.pid] = i["name"] or ""
        me = os.getpid()
        with self._lock:
            for pid, (_, created, cpu) in procs.items():
                key = (pid, created)
                if key in self._ours or self._descends(pid, me, procs):
                    self._ours.add(key)
                    if pid != me:  # a descendant, started after the meter: all its CPU is ours
                        self._ours_cpu[key] = (names[pid], cpu)
                    continue
                # a process started before the meter counts from the first sample that saw it
                before = self._cpu.get(key, 0.0 if created >= self._since else cpu)
                taken = max(cpu - before, 0.0)
                self._other += taken
                self._taken[key] = self._taken.get(key, 0.0) + taken
                self._cpu[key] = cpu

    def _descends(self, pid: int, me: int, procs: dict[int, tuple[int, float, float]]) -> bool:
        seen = set()
        while pid in procs and pid not in seen:
            if pid == me or (pid, procs[pid][1]) in self._ours:
                return True
            seen.add(pid)
            pid = procs[pid][0]
        return False

    def is_ours(self, pid: int) -> bool:
        """Whether process ``pid`` was counted as ours (this process or a descendant)."""
        with self._lock:
            return any(p == pid for p, _ in self._ours)

    def taken_by(self, pid: int) -> float:
        """CPU seconds process ``pid`` took as another process (0 for ours)."""
        with self._lock:
            return sum(s for (p, _), s in self._taken.items() if p == pid)

    def ours_share(self, *names: str) -> float:
        """Fraction of all cores' time the descendants with one of ``names`` took (``name`` as
        the process table has it), up to their last sample: a process that ended lost at most
        ``interval_s`` of its CPU. Stops the meter, as ``other_share`` does."""
        self.other_share()
        wall = self._wall
        with self._lock:
            cpu = sum(c for name, c in self._ours_cpu.values() if name in names)
        return round(min(cpu / wall, 1.0), 3) if wall > 0 else 0.0

    def other_share(self) -> float:
        """Fraction of all cores' time used by other processes since construction (the meter
        stops at the first call; later calls return the same figure)."""
        if self._share is None:
            self._stop.set()
            self._thread.join()
            self._sample()
            wall = self._wall = (time.monotonic() - self._wall0) * self._cores
            share = self._other / wall if wall > 0 else 0.0
            self._share = round(min(max(share, 0.0), 1.0), 3)
        return self._share
