"""FLOPs of a generator, counted by running it once under ``torch.utils.flop_counter``.

Convention: 2 FLOPs per multiply-add of convolutions and matrix products (what a matmul peak is
quoted in); element-wise work (BatchNorm, activations) is not counted, as in the usual tables.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def count_flops(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward pass on ``inputs``."""
    from torch.utils.flop_counter import FlopCounterMode

    # Parameters stop requiring grad while counting: a view of one (a learned constant expanded
    # over the batch) keeps requires_grad without a grad_fn even under inference_mode, and the
    # counter's module tracker fails on it.
    frozen = [p for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return int(counter.get_total_flops())


def flops_per_image(module: nn.Module, latent_dim: int, num_classes: int) -> int:
    """FLOPs to generate one image (counted at batch 2 and halved, so batch-size effects cancel)."""
    z = torch.zeros(2, latent_dim)
    inputs: tuple[Any, ...] = (z, torch.zeros(2, dtype=torch.int64)) if num_classes else (z,)
    return count_flops(module, inputs) // 2
