"""Export directories for the serving tests: a tiny generator, its checkpoint, ONNX files and a
manifest, built with ``gendeploy.export.api.export`` when it is available, otherwise directly
(torch.onnx.export + the manifest dataclasses) so serving can be tested on its own."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gendeploy.export.manifest import (
    Artifact,
    ArtifactKind,
    BatchProfile,
    Manifest,
    Precision,
    Source,
    TensorSpec,
)
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


class _Uint8Head(nn.Module):
    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        x = self.generator(*args)
        x = torch.clamp(torch.round((x + 1.0) * 127.5), 0, 255).to(torch.uint8)
        return x.permute(0, 2, 3, 1)


def make_checkpoint(config: ModelConfig, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    generator = build_generator(config)
    generator.apply(init_weights)
    versions = {"torch": str(torch.__version__)}  # plain str: loads with weights_only=True
    ckpt = Checkpoint(config, step=0, generator=generator.state_dict(), versions=versions)
    save_checkpoint(ckpt, path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _export_onnx(module: nn.Module, config: ModelConfig, path: Path) -> None:
    z = torch.randn(2, config.latent_dim)
    args: tuple[torch.Tensor, ...] = (z,)
    names = ["z"]
    if config.conditional:
        args = (z, torch.zeros(2, dtype=torch.int64))
        names.append("labels")
    axes = {n: {0: "batch"} for n in [*names, "images"]}
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=names,
        output_names=["images"],
        dynamic_axes=axes,
        dynamo=False,
        opset_version=17,
    )


def build_export_directly(checkpoint: Path, out_dir: Path, name: str, max_batch: int = 8) -> Path:
    generator, ckpt = load_generator(checkpoint)
    config = ckpt.model_config
    out_dir.mkdir(parents=True, exist_ok=True)
    c, h, w = config.image_shape
    inputs = [TensorSpec("z", "float32", [-1, config.latent_dim])]
    if config.conditional:
        inputs.append(TensorSpec("labels", "int64", [-1], value_range=[0, config.num_classes - 1]))
    artifacts = []
    for art, module, output in (
        ("fp32", generator, TensorSpec("images", "float32", [-1, c, h, w], "NCHW")),
        ("uint8", _Uint8Head(generator), TensorSpec("images", "uint8", [-1, h, w, c], "NHWC")),
    ):
        path = out_dir / f"{art}.onnx"
        _export_onnx(module, config, path)
        artifacts.append(
            Artifact(art, ArtifactKind.onnx, path.name, Precision.fp32, inputs, output, _sha(path))
        )
    manifest = Manifest(
        name=name,
        source=Source(
            "checkpoint", str(checkpoint), _sha(checkpoint), model_config=config.to_dict()
        ),
        latent_dim=config.latent_dim,
        num_classes=config.num_classes,
        image_shape=[c, h, w],
        batch=BatchProfile(1, 4, max_batch),
        opset=17,
        artifacts=artifacts,
    )
    (out_dir / "manifest.json").write_text(manifest.to_json())
    return out_dir


def build_export(checkpoint: Path, out_dir: Path, name: str, max_batch: int = 8) -> Path:
    """An export dir with fp32 and uint8 ONNX artifacts (the real exporter when it exists)."""
    try:
        from gendeploy.export.api import ExportOptions, ModelSpec, export
    except ImportError:
        return build_export_directly(checkpoint, out_dir, name, max_batch)
    options = ExportOptions(output="uint8", max_batch=max_batch)  # type: ignore[arg-type]
    export(ModelSpec(checkpoint=checkpoint), options, name=name, out=out_dir)
    return out_dir


def eager_images(checkpoint: Path, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    generator, _ = load_generator(checkpoint)
    with torch.no_grad():
        args = [torch.from_numpy(z)]
        if labels is not None:
            args.append(torch.from_numpy(labels.astype(np.int64)))
        return generator(*args).numpy()
