"""``torch.compile`` runner: the eager generator compiled by Inductor, one graph per batch size.

On CPU, Inductor's ``freezing`` turns the weights into constants and pre-packs them for oneDNN;
without it the compiled CPU generator ran slower than eager here. Compilation happens on the first
call at each batch size (seconds), so callers warm it up before timing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gendeploy.runtime.base import Availability
from gendeploy.runtime.eager import EagerRunner

if TYPE_CHECKING:
    from torch import nn


class CompileRunner(EagerRunner):
    name = "torch_compile"

    def __init__(
        self,
        module: nn.Module,
        device: str = "cpu",
        threads: int | None = None,
        mode: str | None = None,
    ) -> None:
        import torch

        super().__init__(module, device, threads)
        # dynamic=False: a static graph per batch size (the bench sweeps a handful), which is what
        # an engine with a fixed profile gets too; automatic dynamic shapes ran slower here.
        self.module = torch.compile(  # type: ignore[assignment]
            self.module, mode=mode, dynamic=False, options={"freezing": True}
        )


def compile_availability() -> Availability:
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return Availability(False, "torch.compile on CPU needs a C++ compiler (none on PATH)")
    return Availability(True)
