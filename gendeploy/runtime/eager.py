"""Eager PyTorch runner: the reference every artifact is compared with, and bench's baseline row."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gendeploy.runtime.base import Feeds, Runner

if TYPE_CHECKING:
    from torch import nn


class EagerRunner(Runner):
    """Runs an ``nn.Module`` generator under ``torch.inference_mode`` on CPU or CUDA.

    Feeds are passed positionally in the order ``z``, ``labels`` (the generator signature), or in
    the module's ``input_names`` order up to the first one missing (``signature.ServedGenerator``:
    left-out trailing inputs take the model's defaults).
    ``eval_mode=False`` runs the module in the mode it is in: the export gate checks the model as
    given, so a BatchNorm left in training mode fails there instead of being silently fixed.
    """

    name = "eager"

    def __init__(
        self,
        module: nn.Module,
        device: str = "cpu",
        threads: int | None = None,
        eval_mode: bool = True,
    ) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.module = (module.eval() if eval_mode else module).to(self.device)

    def run(self, feeds: Feeds) -> np.ndarray:
        import torch

        args = []
        for name in getattr(self.module, "input_names", ("z", "labels")):
            if name not in feeds:
                break
            args.append(torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device))
        with torch.inference_mode():
            out = self.module(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return out.detach().cpu().numpy()
