"""What a training run is: its ``TrainConfig``, the presets pairing a model with one, and how
flags override them. Shared by the training loop, the run directory and the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gendeploy.errors import CheckpointError, UsageError
from gendeploy.trainer.checkpoint import Checkpoint
from gendeploy.trainer.data import DatasetName
from gendeploy.trainer.models import ModelConfig


@dataclass(frozen=True)
class TrainConfig:
    dataset: DatasetName = DatasetName.digits
    data_path: str | None = None
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    # 0 disables the generator EMA. The warm-up (1 + step) / (10 + step) caps the decay, so 0.999
    # only takes effect after step ~9000: short runs average over roughly the last 200-300 steps.
    ema_decay: float = 0.0
    aux_weight: float = 1.0  # conditional models: weight of the auxiliary class loss (AC-GAN)
    # Mode seeking (Mao et al., MSGAN): rewards different images for different z under one label;
    # without it conditional generators here learn one image per class and ignore z.
    diversity_weight: float = 0.0
    # DiffAugment (Zhao et al.): random translations of every image the discriminator sees, real
    # and fake alike, so a small dataset does not let it memorise; fraction of the image side.
    translate: float = 0.0
    seed: int = 0
    sample_every: int = 250
    checkpoint_every: int = 250
    eval_at_end: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "dataset", DatasetName(self.dataset))
        except ValueError:
            choices = ", ".join(d.value for d in DatasetName)
            raise UsageError(
                f"unknown dataset {self.dataset!r}; choose one of: {choices}"
            ) from None
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.steps < 1 or self.batch_size < 1:
            raise UsageError("--steps and --batch-size must be at least 1")
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"--ema must be in [0, 1), got {self.ema_decay}")
        if self.sample_every < 1 or self.checkpoint_every < 1:
            raise UsageError("--sample-every and --checkpoint-every must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dataset"] = self.dataset.value
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise CheckpointError(f"unknown train config fields: {sorted(unknown)}")
        return cls(**d)


# What may differ when a run is resumed: how long it goes on and how often it reports.
RESUMABLE_CHANGES = ("steps", "sample_every", "checkpoint_every", "eval_at_end")


@dataclass(frozen=True)
class Preset:
    description: str
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)


PRESETS: dict[str, Preset] = {
    "digits-cdcgan": Preset(
        "conditional DCGAN 32x32 on digits (the default)",
        ModelConfig(arch="dcgan", image_size=32, num_classes=10, width=32),  # type: ignore[arg-type]
        TrainConfig(
            steps=2000, batch_size=64, ema_decay=0.999, diversity_weight=0.5, translate=0.125
        ),
    ),
    "digits-dcgan": Preset(
        "unconditional DCGAN 32x32 on digits",
        ModelConfig(arch="dcgan", image_size=32, width=32),  # type: ignore[arg-type]
        TrainConfig(
            steps=3000, batch_size=64, ema_decay=0.999, diversity_weight=0.5, translate=0.125
        ),
    ),
    "seed-mlp": Preset(
        "the classic MLP GAN (latent 100 -> 256 -> 512 -> 1024), fixed, on digits 32x32",
        ModelConfig(arch="mlp", image_size=32, width=64),  # type: ignore[arg-type]
        TrainConfig(steps=3000, batch_size=64),
    ),
    "dcgan64": Preset(
        "the reference DCGAN-64 (pytorch/examples), RGB 64x64; pair with --dataset",
        ModelConfig(arch="dcgan", image_size=64, image_channels=3, width=64),  # type: ignore[arg-type]
        TrainConfig(steps=5000, batch_size=64),
    ),
}
DEFAULT_PRESET = "digits-cdcgan"


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def saved_train_config(ckpt: Checkpoint, source: Path) -> TrainConfig:
    """The checkpoint's train config; fields it predates take their defaults."""
    try:
        return TrainConfig.from_dict(ckpt.train_config)
    except (CheckpointError, TypeError, ValueError, UsageError) as e:
        raise CheckpointError(f"{source} has an invalid train config: {e}") from None


def with_overrides(base: Preset, **overrides: Any) -> tuple[ModelConfig, TrainConfig]:
    """Apply CLI flags (None = keep the preset's value) to a preset's configs."""
    model_fields = set(ModelConfig.__dataclass_fields__)
    model_kw = {k: v for k, v in overrides.items() if v is not None and k in model_fields}
    train_kw = {k: v for k, v in overrides.items() if v is not None and k not in model_fields}
    try:
        return replace(base.model, **model_kw), replace(base.train, **train_kw)
    except ValueError as e:
        raise UsageError(str(e)) from None
