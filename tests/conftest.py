"""Shared fixtures: tiny model configs and checkpoints written without training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gendeploy.trainer.checkpoint import Checkpoint, save_checkpoint
from gendeploy.trainer.config import Arch, ModelConfig
from gendeploy.trainer.models import build_generator, init_weights

# Small enough that an export + gate takes about two seconds on one core.
TINY_CONDITIONAL_DCGAN = ModelConfig(
    arch=Arch.dcgan,
    latent_dim=16,
    image_channels=1,
    image_size=32,
    num_classes=4,
    width=8,
    embed_dim=8,
)
TINY_MLP = ModelConfig(arch=Arch.mlp, latent_dim=8, image_channels=1, image_size=8, width=4)

MakeCheckpoint = Callable[..., Path]


def write_checkpoint(config: ModelConfig, path: Path, seed: int = 0) -> Path:
    """A loadable gendeploy checkpoint with DCGAN-initialised weights (no training)."""
    torch.manual_seed(seed)
    generator = build_generator(config)
    generator.apply(init_weights)
    save_checkpoint(Checkpoint(config, step=0, generator=generator.state_dict()), path)
    return path


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> MakeCheckpoint:
    """``make_checkpoint(config, run="tiny", seed=0)`` -> ``tmp_path/runs/<run>/checkpoint.pt``."""

    def make(
        config: ModelConfig = TINY_CONDITIONAL_DCGAN, run: str = "tiny", seed: int = 0
    ) -> Path:
        return write_checkpoint(config, tmp_path / "runs" / run / "checkpoint.pt", seed)

    return make
