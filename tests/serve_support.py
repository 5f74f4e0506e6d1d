"""Export directories for the serving tests: a tiny generator's checkpoint exported by the real
exporter (``gendeploy.export.api.export``, fp32 + uint8 artifacts), and its eager images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gendeploy.export.api import ExportOptions, ModelSpec, OutputKind, export
from gendeploy.trainer.checkpoint import Checkpoint, load_generator, save_checkpoint
from gendeploy.trainer.models import Arch, ModelConfig, build_generator, init_weights

TINY_CONDITIONAL = ModelConfig(
    arch=Arch.dcgan,
    latent_dim=16,
    image_channels=1,
    image_size=32,
    num_classes=4,
    width=8,
    embed_dim=8,
)
TINY_UNCONDITIONAL = ModelConfig(
    arch=Arch.mlp, latent_dim=8, image_channels=1, image_size=8, num_classes=0, width=4
)


def make_checkpoint(config: ModelConfig, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    generator = build_generator(config)
    generator.apply(init_weights)
    versions = {"torch": str(torch.__version__)}  # plain str: loads with weights_only=True
    ckpt = Checkpoint(config, step=0, generator=generator.state_dict(), versions=versions)
    save_checkpoint(ckpt, path)
    return path


def build_export(checkpoint: Path, out_dir: Path, name: str, max_batch: int = 8) -> Path:
    """An export dir with gated fp32 and uint8 ONNX artifacts and its manifest."""
    options = ExportOptions(output=OutputKind.uint8, max_batch=max_batch)
    export(ModelSpec(checkpoint=checkpoint), options, name=name, out=out_dir)
    return out_dir


def eager_images(checkpoint: Path, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    generator, _ = load_generator(checkpoint)
    with torch.no_grad():
        args = [torch.from_numpy(z)]
        if labels is not None:
            args.append(torch.from_numpy(labels.astype(np.int64)))
        return np.asarray(generator(*args).numpy())
