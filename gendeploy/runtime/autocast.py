"""Eager PyTorch under autocast: bf16 (or fp16) arithmetic where the device has units for it.

bf16 on CPUs with avx512_bf16 / AMX (oneDNN), fp16 and bf16 on CUDA GPUs. fp16 on a CPU without
native fp16 units is emulated and many times slower than fp32, so it is reported as unavailable.
Outputs are returned as float32 so they compare with eager directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gendeploy.errors import MissingDependencyError
from gendeploy.runtime.base import Availability
from gendeploy.runtime.eager import EagerRunner

if TYPE_CHECKING:
    from torch import nn

DTYPES = ("bfloat16", "float16")


def autocast_availability(dtype: str, device: str = "cpu") -> Availability:
    """Whether autocast in ``dtype`` runs on real hardware units on ``device``."""
    import torch

    if dtype not in DTYPES:
        return Availability(False, f"autocast dtype must be one of {DTYPES}, got {dtype!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return Availability(False, "no CUDA device")
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            return Availability(False, "this GPU has no bf16 support")
        return Availability(True)
    mkldnn = torch.ops.mkldnn
    supported = {
        "bfloat16": mkldnn._is_mkldnn_bf16_supported,
        "float16": mkldnn._is_mkldnn_fp16_supported,
    }[dtype]()
    if not supported:
        unit = "avx512_bf16 or AMX" if dtype == "bfloat16" else "avx512_fp16 or AMX-FP16"
        return Availability(False, f"this CPU has no {unit}: {dtype} would be emulated")
    return Availability(True)


class AutocastRunner(EagerRunner):
    """``EagerRunner`` inside ``torch.autocast(device_type, dtype)``."""

    def __init__(
        self,
        module: nn.Module,
        dtype: str = "bfloat16",
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        status = autocast_availability(dtype, device)
        if not status.ok:
            raise MissingDependencyError(f"autocast {dtype} on {device}: {status.reason}")
        super().__init__(module, device, threads)
        self.module = _autocast_module(self.module, self.device.type, dtype)
        self.dtype = dtype
        self.precision = "bf16" if dtype == "bfloat16" else "fp16"
        self.name = f"eager_{self.precision}"


def _autocast_module(module: nn.Module, device_type: str, dtype: str) -> nn.Module:
    import torch

    class Autocast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type, dtype=getattr(torch, dtype)):
                out = self.inner(*args)
            return out.float()

    return Autocast()
