"""What machine and software a bench ran on: CPU model and flags, cores, load, GPU, versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

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
    """

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self._cores = psutil.cpu_count() or 1
        self._start = (self._busy(), self._own(), _monotonic())

    def _busy(self) -> float:
        import psutil

        t = psutil.cpu_times()
        return float(
            t.user
            + t.system
            + getattr(t, "nice", 0.0)
            + getattr(t, "irq", 0.0)
            + getattr(t, "softirq", 0.0)
        )

    def _own(self) -> float:
        t = self._proc.cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)

    def other_share(self) -> float:
        """Fraction of all cores' time used by other processes since construction."""
        busy0, own0, wall0 = self._start
        wall = (_monotonic() - wall0) * self._cores
        if wall <= 0:
            return 0.0
        other = (self._busy() - busy0) - (self._own() - own0)
        return round(min(max(other / wall, 0.0), 1.0), 3)


def _monotonic() -> float:
    import time

    return time.monotonic()
