"""Self-describing checkpoints.

A checkpoint is a ``torch.save`` of plain containers and tensors only, so it loads with
``torch.load(weights_only=True)`` (no arbitrary unpickling). It carries the model config, the
train config, the step and the versions beside the weights, so export needs no training flags.
Writes are atomic: a temporary file in the same directory, fsync, then ``os.replace``.
"""

from __future__ import annotations

import json
import pickle
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gendeploy import __version__
from gendeploy.errors import CheckpointError
from gendeploy.fileio import atomic_write
from gendeploy.trainer.config import ModelConfig
from gendeploy.trainer.models import build_generator

FORMAT = "gendeploy-checkpoint"
SCHEMA_VERSION = 1


def versions() -> dict[str, str]:
    return {
        "gendeploy": __version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }


@dataclass
class Checkpoint:
    model_config: ModelConfig
    step: int
    generator: dict[str, torch.Tensor]
    train_config: dict[str, Any] = field(default_factory=dict)
    generator_ema: dict[str, torch.Tensor] | None = None
    discriminator: dict[str, torch.Tensor] | None = None
    optimizer_g: dict[str, Any] | None = None
    optimizer_d: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=versions)

    def inference_state(self) -> dict[str, torch.Tensor]:
        """The weights to deploy: the EMA generator when training kept one."""
        return self.generator_ema if self.generator_ema is not None else self.generator


def save_checkpoint(ckpt: Checkpoint, path: Path) -> None:
    payload = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "model_config": ckpt.model_config.to_dict(),
        "train_config": ckpt.train_config,
        "step": ckpt.step,
        "versions": ckpt.versions,
        "metrics": ckpt.metrics,
        "generator": ckpt.generator,
        "generator_ema": ckpt.generator_ema,
        "discriminator": ckpt.discriminator,
        "optimizer_g": ckpt.optimizer_g,
        "optimizer_d": ckpt.optimizer_d,
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Load and check a gendeploy checkpoint without unpickling anything but tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (pass runs/<name>/checkpoint.pt)")
    try:
        with warnings.catch_warnings():  # torch warns about legacy (non-zip) files first
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any other bytes: torch's legacy reader raises all sorts
        if _is_json(path):  # config.json or quality.json beside the checkpoint
            raise CheckpointError(
                f"{path} is a JSON file, not a checkpoint; pass the run directory or the "
                "checkpoint.pt in it"
            ) from None
        if isinstance(e, pickle.UnpicklingError):
            raise CheckpointError(
                f"{path} is not a gendeploy checkpoint (it holds Python objects, not only "
                "tensors, and was not unpickled); pass a checkpoint written by `gendeploy train`"
            ) from None
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise CheckpointError(
            f"{path} is not a gendeploy checkpoint (corrupt or truncated: {reason}); "
            "pass a checkpoint written by `gendeploy train`"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a torch file but not a gendeploy checkpoint (no '{FORMAT}' marker); "
            "for a bare state dict use `gendeploy export --model FILE.py:Class --weights`"
        )
    if payload.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint schema {payload.get('schema_version')}, this gendeploy reads "
            f"{SCHEMA_VERSION}; re-train or use a matching gendeploy version"
        )
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an invalid model config: {e}") from None
    step, generator = payload.get("step"), payload.get("generator")
    optional = ("generator_ema", "discriminator", "optimizer_g", "optimizer_d", "train_config")
    if (
        not isinstance(step, int)
        or not isinstance(generator, dict)
        or not all(isinstance(payload.get(k), dict | None) for k in optional)
    ):
        raise CheckpointError(
            f"{path} is an incomplete or damaged gendeploy checkpoint (step, weights or "
            "training state missing or of the wrong type); pass one written by `gendeploy train`"
        )
    return Checkpoint(
        model_config=config,
        step=step,
        generator=generator,
        train_config=payload.get("train_config") or {},
        generator_ema=payload.get("generator_ema"),
        discriminator=payload.get("discriminator"),
        optimizer_g=payload.get("optimizer_g"),
        optimizer_d=payload.get("optimizer_d"),
        metrics=payload.get("metrics") or {},
        versions=payload.get("versions") or {},
    )


def _is_json(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            if f.read(64).lstrip()[:1] not in (b"{", b"["):
                return False  # not worth reading a large binary file whole
        json.loads(path.read_bytes())
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return True


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error for weights of another model."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]
        raise CheckpointError(
            f"weights in {source} do not fit {type(module).__name__} ({detail}); "
            "check the architecture and its flags match the weights"
        ) from None


def load_generator(path: Path | str) -> tuple[nn.Module, Checkpoint]:
    """The deployable generator from a checkpoint, in eval mode, on CPU."""
    ckpt = load_checkpoint(path)
    generator = build_generator(ckpt.model_config)
    load_state_into(generator, ckpt.inference_state(), str(path))
    return generator.eval(), ckpt
